import { LabIcon } from '@jupyterlab/ui-components';

/** A shipping container: the sidebar tab of the Docker environments panel. */
const containerSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 1.5 2.5 6.25v11.5L12 22.5l9.5-4.75V6.25L12 1.5zm0 2.24 6.9 3.45L12 10.64 5.1 7.19 12 3.74zM4.5 8.8l6.5 3.25v7.9l-6.5-3.25V8.8zm8.5 11.15v-7.9l6.5-3.25v7.9L13 19.95z"/>
  </g>
</svg>`;

export const dockerEnvIcon = new LabIcon({
  name: 'jupyter-docker-env:container',
  svgstr: containerSvg
});
