import * as React from 'react';

import { DockerEnv } from '../api';

const BUILDERS: { [builder in DockerEnv.Builder]: string } = {
  buildkit: 'BuildKit',
  legacy: 'legacy builder'
};

/** The engine's version and builder, the GPU and the registry, in one line. */
export function StatusFooter(props: {
  status: DockerEnv.IStatus;
}): JSX.Element {
  const { engine, gpu, registry } = props.status;
  const parts = engine.available
    ? [`Docker ${engine.version ?? ''}`.trim()]
    : ['Docker engine unavailable'];
  if (engine.available && engine.builder) {
    parts.push(BUILDERS[engine.builder] ?? engine.builder);
  }
  parts.push(gpu.available ? 'GPU available' : 'no GPU');
  if (registry) {
    parts.push(`registry ${registry}`);
  }
  return (
    <footer
      className="jp-DockerEnv-footer"
      data-testid="status-footer"
      title={gpu.available ? undefined : (gpu.reason ?? undefined)}
    >
      {parts.join(' · ')}
    </footer>
  );
}
