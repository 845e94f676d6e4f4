import { DockerEnv, DockerEnvAPI } from '../api';

/** What the panel asks of the application. */
export interface IPanelActions {
  /** Opens a notebook on the environment's kernel, or on a kernel already started. */
  openNotebook: (
    env: DockerEnv.IEnv,
    kernel?: DockerEnv.IKernel
  ) => Promise<void>;
  openConsole: (
    env: DockerEnv.IEnv,
    kernel?: DockerEnv.IKernel
  ) => Promise<void>;
  /** Makes the launcher and kernel picker list new kernels without a reload. */
  refreshKernelSpecs: () => Promise<void>;
  /** The path of the document open in the main area (a notebook to run), if any. */
  currentDocument: () => string | null;
  /** The folder the file browser shows: where a command run starts. */
  browserFolder: () => string;
  /** Opens a workspace file (an executed notebook). */
  openPath: (path: string) => Promise<void>;
}

/** What every section of an environment card receives from the card. */
export interface IEnvSectionProps {
  env: DockerEnv.IEnv;
  status: DockerEnv.IStatus;
  api: DockerEnvAPI;
  actions: IPanelActions;
  /** True while an action of this card runs: disable what would start another. */
  busy: boolean;
  /**
   * Runs an action of the card: `busy` meanwhile, and what it throws shown in the card (catch a
   * field's error yourself to show it next to that field).
   */
  run: (action: () => Promise<void>) => Promise<void>;
  /** Fetches the environment again, after something else changed it (a run built it). */
  refreshEnv: () => Promise<void>;
  /** Starts a build, push or pull and follows it in the card's operation view. */
  startOperation: (start: () => Promise<DockerEnv.IOperation>) => Promise<void>;
}
