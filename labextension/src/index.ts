import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDocumentWidget } from '@jupyterlab/docregistry';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';

import { DockerEnv, DockerEnvAPI } from './api';
import { dockerEnvIcon } from './icon';
import { NotebookEnvExtension } from './notebookenv';
import { DockerEnvPanel, PANEL_ID } from './panel';

export { DockerEnv, DockerEnvAPI, DockerEnvAPIError } from './api';

const OPEN_COMMAND = 'docker-env:open';

/** Runs a command of another plugin, saying which plugin is missing when it is. */
async function execute(
  app: JupyterFrontEnd,
  command: string,
  args: { [key: string]: any }
): Promise<void> {
  if (!app.commands.hasCommand(command)) {
    throw new Error(
      `JupyterLab has no command ${command}: is its plugin disabled?`
    );
  }
  await app.commands.execute(command, args);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-docker-env:plugin',
  description:
    'A sidebar panel that builds Docker environments, opens notebooks whose kernels run in them, and runs scripts and notebooks as training runs.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, ILauncher, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    fileBrowser: IDefaultFileBrowser | null
  ) => {
    const api = new DockerEnvAPI(app.serviceManager.serverSettings);
    const panel = new DockerEnvPanel(api, {
      openNotebook: (env: DockerEnv.IEnv, kernel?: DockerEnv.IKernel) =>
        execute(app, 'notebook:create-new', {
          kernelName: env.kernel_name,
          ...(kernel ? { kernelId: kernel.id } : {})
        }),
      openConsole: (env: DockerEnv.IEnv, kernel?: DockerEnv.IKernel) =>
        execute(app, 'console:create', {
          kernelPreference: kernel
            ? { id: kernel.id, name: kernel.name }
            : { name: env.kernel_name }
        }),
      refreshKernelSpecs: () => app.serviceManager.kernelspecs.refreshSpecs(),
      currentDocument: () => {
        // the main area's current widget; the sidebar holding the panel never is
        const widget = app.shell
          .currentWidget as Partial<IDocumentWidget> | null;
        return widget?.context?.path ?? null;
      },
      browserFolder: () => fileBrowser?.model.path ?? '',
      openPath: (path: string) => execute(app, 'docmanager:open', { path })
    });
    app.shell.add(panel, 'left', { rank: 600 });
    // Notebooks that record their environment say when it is missing here or differs.
    app.docRegistry.addWidgetExtension(
      'Notebook',
      new NotebookEnvExtension(api, () =>
        app.serviceManager.kernelspecs.refreshSpecs()
      )
    );
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Docker Environments',
      caption: 'Build Docker environments and run notebooks in them',
      icon: args => (args['isPalette'] ? undefined : dockerEnvIcon),
      execute: () => app.shell.activateById(PANEL_ID)
    });
    if (palette) {
      palette.addItem({ command: OPEN_COMMAND, category: 'Docker' });
    }
    if (launcher) {
      launcher.add({ command: OPEN_COMMAND, category: 'Other', rank: 10 });
    }
  }
};

export default plugin;
