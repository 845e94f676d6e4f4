import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
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
    'A sidebar panel that builds Docker environments and opens notebooks whose kernels run in them.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, ILauncher],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    launcher: ILauncher | null
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
      refreshKernelSpecs: () => app.serviceManager.kernelspecs.refreshSpecs()
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
