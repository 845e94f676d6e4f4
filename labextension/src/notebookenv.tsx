import { Dialog, ReactWidget } from '@jupyterlab/apputils';
import { DocumentRegistry, IDocumentWidget } from '@jupyterlab/docregistry';
import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from './api';
import { asAPIError, NotebookEnvView } from './components';
import { dockerEnvIcon } from './icon';

/** The notebook metadata key the server writes on save (docs/notebooks.md). */
const METADATA_KEY = 'docker_env';

/** What this reads of a notebook's shared model (ISharedNotebook of @jupyter/ydoc). */
interface IMetadataSource {
  getMetadata?: (key: string) => unknown;
}

const LABELS: { [state in DockerEnv.NotebookEnvState]?: string } = {
  missing: 'Environment missing',
  different: 'Environment differs'
};

/**
 * The notebook toolbar item that says when the notebook's recorded environment is missing here
 * or differs, and opens the dialog that compares it and recreates it. Hidden otherwise.
 */
class NotebookEnvItem extends ReactWidget {
  constructor(
    private readonly api: DockerEnvAPI,
    private readonly context: DocumentRegistry.IContext<DocumentRegistry.IModel>,
    private readonly refreshKernelSpecs: () => Promise<void>
  ) {
    super();
    this.addClass('jp-DockerEnv-notebookItem');
    this.hide();
  }

  /** Asks the server how the notebook's recorded environment compares with the one here. */
  async check(): Promise<void> {
    try {
      this.comparison = await this.api.compareNotebookEnv(this.context.path);
      this.error = null;
    } catch (reason) {
      this.error = asAPIError(reason).message;
    }
    const state = this.comparison?.state;
    this.setHidden(
      this.settled || (!this.error && !(state && state in LABELS))
    );
    this.update();
  }

  render(): JSX.Element {
    const state = this.comparison?.state;
    const label = this.error
      ? 'Environment record unreadable'
      : ((state && LABELS[state]) ?? '');
    return (
      <button
        type="button"
        className="jp-DockerEnv-notebookButton"
        data-testid="notebook-env-item"
        data-state={this.error ? 'error' : state}
        title={this.error ?? this.comparison?.message}
        onClick={() => void this.open()}
      >
        <dockerEnvIcon.react tag="span" />
        <span>{label}</span>
      </button>
    );
  }

  private async open(): Promise<void> {
    const comparison = this.comparison;
    if (this.error || !comparison) {
      await new Dialog({
        title: 'Notebook environment',
        body: this.error ?? '',
        buttons: [Dialog.okButton()]
      }).launch();
      return;
    }
    const session = this.context.sessionContext;
    const body = ReactWidget.create(
      <NotebookEnvView
        api={this.api}
        comparison={comparison}
        kernelName={() => session.session?.kernel?.name ?? null}
        useKernel={async name => {
          await session.changeKernel({ name });
        }}
        refreshKernelSpecs={this.refreshKernelSpecs}
        onSettled={() => {
          this.settled = true;
          this.hide();
        }}
      />
    );
    await new Dialog({
      title: `Notebook environment: ${comparison.env ?? ''}`,
      body,
      buttons: [Dialog.cancelButton({ label: 'Close' })]
    }).launch();
  }

  private comparison: DockerEnv.INotebookEnv | null = null;
  private error: string | null = null;
  private settled = false;
}

/** Adds the item to every notebook that records an environment (metadata.docker_env). */
export class NotebookEnvExtension implements DocumentRegistry.IWidgetExtension<
  IDocumentWidget,
  DocumentRegistry.IModel
> {
  constructor(
    private readonly api: DockerEnvAPI,
    private readonly refreshKernelSpecs: () => Promise<void>
  ) {}

  createNew(
    widget: IDocumentWidget,
    context: DocumentRegistry.IContext<DocumentRegistry.IModel>
  ): ReactWidget {
    const item = new NotebookEnvItem(
      this.api,
      context,
      this.refreshKernelSpecs
    );
    widget.toolbar.insertItem(10, 'dockerEnv', item);
    void context.ready.then(() => {
      const source = context.model.sharedModel as unknown as IMetadataSource;
      if (source.getMetadata?.(METADATA_KEY)) {
        void item.check();
      }
    });
    return item;
  }
}
