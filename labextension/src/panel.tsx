import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { DockerEnvAPI } from './api';
import { IPanelActions, PanelView } from './components';
import { dockerEnvIcon } from './icon';

export type { IPanelActions } from './components';

export const PANEL_ID = 'jupyter-docker-env-panel';

/** The left sidebar panel: every Docker environment, its operations and its kernels. */
export class DockerEnvPanel extends ReactWidget {
  constructor(
    private readonly api: DockerEnvAPI,
    private readonly actions: IPanelActions
  ) {
    super();
    this.id = PANEL_ID;
    this.addClass('jp-DockerEnv-panel');
    this.title.icon = dockerEnvIcon;
    this.title.caption = 'Docker environments';
  }

  protected onAfterShow(): void {
    // Show what changed while the panel was hidden.
    this.shown += 1;
    this.update();
  }

  render(): JSX.Element {
    return (
      <PanelView
        api={this.api}
        actions={this.actions}
        shown={this.shown}
        isVisible={this.isShown}
      />
    );
  }

  private shown = 0;
  private readonly isShown = (): boolean => this.isVisible;
}
