import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The REST types of jupyter_docker_env/openapi.yaml. */
export namespace DockerEnv {
  export type EnvState =
    'not_built' | 'building' | 'built' | 'failed' | 'outdated';
  export type EnvKind = 'spec' | 'requirements' | 'environment' | 'dockerfile';
  export type OperationKind =
    'build' | 'push' | 'pull' | 'restore' | 'serving-build' | 'serving-push';
  export type OperationState =
    'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
  export type Builder = 'buildkit' | 'legacy';

  export interface IStatus {
    version: string;
    engine: {
      available: boolean;
      host?: string | null;
      version?: string | null;
      api_version?: string | null;
      /** Why the engine is unavailable and what to do. */
      reason?: string | null;
      /** The builder builds use. */
      builder?: Builder | null;
    };
    gpu: {
      available: boolean;
      runtimes?: string[];
      reason?: string | null;
    };
    /** Base images users may pick; empty means any. */
    allowed_bases: string[];
    default_base: string;
    registry: string | null;
  }

  /** The keys of docker-env.toml. */
  export interface ISpec {
    name?: string;
    base?: string;
    pip?: string[];
    apt?: string[];
    conda?: string[];
    gpu?: boolean;
    env?: { [key: string]: string };
    /** A requirements.txt inside the folder. */
    requirements?: string;
    /** An environment.yml inside the folder. */
    environment?: string;
  }

  export interface IEnvCreate extends ISpec {
    /** A requirements.txt, environment.yml or Dockerfile in the workspace. */
    from_path?: string;
  }

  export interface IImage {
    id: string;
    tag: string;
    size?: number;
    created?: string;
    /** Registry digest, once pushed or pulled. */
    digest?: string | null;
  }

  /** What is exactly inside the image (docker-env.lock). */
  export interface ILock {
    /** Installed into the kernel's venv (name==version). */
    pip: string[];
    /** Importable, added by apt or conda. */
    pip_system: string[];
    /** Importable, from the base image. */
    pip_base: string[];
    conda: string[];
    /** The spec's apt packages, name=version. */
    apt: string[];
    base: {
      image: string;
      id: string;
      /** repository@sha256:…; empty when the base has none. */
      digest: string;
    } | null;
  }

  /** A build, push, pull or restore, followed at operations/{id}. */
  export interface IOperation {
    id: string;
    env: string;
    kind: OperationKind;
    state: OperationState;
    /** Current Dockerfile step, 1-based. */
    step?: number;
    total_steps?: number;
    progress?: number;
    /** Log lines from the requested offset. */
    log: string[];
    /** The offset to ask for next. */
    log_offset: number;
    error?: string | null;
    /** The instruction that failed. */
    failed_step?: string | null;
    image?: string | null;
    built?: boolean | null;
    pulled?: boolean | null;
    started?: number | null;
    finished?: number | null;
  }

  export interface IEnv {
    name: string;
    display_name?: string;
    path: string;
    kind: EnvKind;
    readonly: boolean;
    base: string | null;
    pip?: string[];
    apt?: string[];
    conda?: string[];
    gpu: boolean;
    env?: { [key: string]: string };
    requirements?: string | null;
    environment?: string | null;
    state: EnvState;
    /** Why the spec is invalid, when it is. */
    error?: string | null;
    spec_hash: string | null;
    kernel_name: string;
    image?: IImage | null;
    lock?: ILock | null;
    /** The running or last operation. */
    operation?: IOperation | null;
    /** Where a push puts the current image; ask `registryState` whether it is there. */
    registry?: string | null;
  }

  /** Whether the registry has an environment's current image (GET envs/{name}/registry). */
  export interface IRegistryState {
    image: string;
    /** null when the registry could not be asked. */
    available: boolean | null;
    reason?: string | null;
  }

  export interface IBuildOptions {
    /** Rebuild every layer (refreshes unpinned packages). */
    no_cache?: boolean;
    /** Install the exact versions of the lock file. */
    from_lock?: boolean;
    /** Try the registry before building. */
    pull?: boolean;
  }

  /** Resources of one kernel start (POST envs/{name}/kernels). */
  export interface IKernelOptions {
    /** The notebook's folder, relative to the workspace. */
    path?: string;
    /** CPU limit, e.g. 1.5. */
    cpus?: number;
    /** Memory limit, e.g. 2g. */
    memory?: string;
    /** "all", a count, or device ids such as "0,1"; "" for none. */
    gpus?: string;
  }

  /** The started kernel, as /api/kernels gives it. */
  export interface IKernel {
    id: string;
    name: string;
  }

  /** A serving image of an environment from a model and a handler (POST envs/{name}/serving). */
  export interface IServingBuild {
    /** A model file or folder, relative to the workspace. */
    model: string;
    /** FILE.py:FUNCTION, FILE relative to the workspace. */
    handler: string;
    /** Another name for the image, e.g. registry.example.com/team/x:1. */
    tag?: string | null;
    /** Rebuild every layer. */
    no_cache?: boolean;
  }

  /** A serving image, with its environment's image size (GET serving). */
  export interface IServingImage {
    id: string;
    /** Its content-hash tag, PREFIX-serving/ENV:HASH. */
    image: string;
    tags: string[];
    /** The environment it serves. */
    env: string;
    spec_hash: string;
    /** Bytes. */
    size: number;
    created: string;
    env_image: {
      id: string;
      /** Bytes; null once that image is gone from the engine. */
      size: number | null;
    };
    model: {
      /** Inside the image. */
      path: string;
      digest: string;
      size: number;
    };
    /** FILE.py:FUNCTION. */
    handler: string;
    /** The kernel-only distributions left out (name==version). */
    removed: string[];
  }

  /** An environment here, as a comparison names it. */
  export interface IEnvRef {
    name: string;
    kernel_name: string;
    state?: EnvState | null;
    /** What its kernel runs. */
    spec_hash?: string | null;
  }

  /** One thing that differs between a notebook's recorded environment and the one here. */
  export interface IDifference {
    /** python, apt, conda, base, pip, spec, or a requirements/environment file. */
    section: string;
    name: string;
    /** Its version in the notebook's environment; null: not there. */
    notebook: string | null;
    /** Its version here; null: not here. */
    here: string | null;
    /** The difference in words. */
    words: string;
  }

  /** What recreating a notebook's environment would do, shown before the user confirms. */
  export interface IRestorePlan {
    /** The environment it creates, or completes when it has the recorded spec. */
    name: string;
    /** Its kernel, which the notebook switches to. */
    kernel_name: string;
    kind: EnvKind;
    base: string | null;
    base_digest?: string | null;
    /** What pip installs: the recorded exact versions when there is a lock. */
    pip: string[];
    apt: string[];
    conda: string[];
    /** The recorded spec files, as they will be written. */
    files: { [name: string]: string };
    /** The registry image, by digest, it tries to pull before building. */
    source?: string | null;
    allowed: boolean;
    /** Why it may not, when it may not. */
    refusal?: string | null;
    field?: string | null;
  }

  /**
   * none: no recorded environment; missing: not here (or not built);
   * different: another spec or other versions.
   */
  export type NotebookEnvState = 'none' | 'same' | 'different' | 'missing';

  /** A notebook's recorded environment (metadata.docker_env) against the one here. */
  export interface INotebookEnv {
    path: string;
    state: NotebookEnvState;
    /** The comparison in words. */
    message: string;
    /** The recorded environment's name. */
    env?: string | null;
    kernel_name?: string | null;
    spec_hash?: string | null;
    image_id?: string | null;
    /** The recorded image in its registry, by digest. */
    registry_image?: string | null;
    /** The environment of that name here. */
    current?: IEnvRef | null;
    /** Another environment here that is the recorded one (same spec and versions). */
    match?: IEnvRef | null;
    differences?: IDifference[];
    restore?: IRestorePlan | null;
  }

  export type RunState =
    'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'timed_out';

  /** What to run (POST runs): a command or a notebook; paths relative to the workspace. */
  export interface IRunCreate {
    env: string;
    /** The program and its arguments. */
    command?: string[];
    /** The notebook to execute (.ipynb). */
    notebook?: string;
    /** Notebook parameters, injected after the cell tagged `parameters`. */
    parameters?: { [name: string]: unknown };
    /** Where the executed notebook goes (default runs/NAME-ID.ipynb beside the notebook). */
    output?: string;
    /** A command's working directory (a notebook's is its folder). */
    cwd?: string;
    cpus?: number;
    memory?: string;
    gpus?: string;
    /** Seconds for the whole run, all attempts; it ends timed_out. */
    timeout?: number;
    /** Attempts after a failed one. */
    retries?: number;
    /** Copy the code into a run image instead of mounting the workspace. */
    snapshot?: boolean;
  }

  /** A training run (GET runs/{id}). */
  export interface IRun {
    id: string;
    env: string;
    kind: 'command' | 'notebook';
    command: string[];
    notebook: string | null;
    parameters: { [name: string]: unknown };
    cwd: string;
    cpus: number | null;
    memory: string | null;
    gpus: string | null;
    timeout: number | null;
    retries: number;
    snapshot: boolean;
    state: RunState;
    /** Attempts made so far (retries + 1 at most). */
    attempt: number;
    exit_code: number | null;
    /** It failed because it ran out of memory. */
    oom_killed?: boolean;
    /** Why it failed, timed out or was cancelled. */
    reason?: string | null;
    /** Seconds since the epoch. */
    created: number;
    started: number | null;
    finished: number | null;
    /** Seconds it ran (so far). */
    duration?: number | null;
    user?: string;
    /** The executed notebook, relative to the workspace. */
    output: string | null;
    /** The log file, relative to the workspace. */
    log: string;
    image?: string | null;
  }

  /** A run's log lines from an offset (GET runs/{id}/log). */
  export interface IRunLog {
    id: string;
    state: RunState;
    /** Whole lines from the requested offset. */
    log: string[];
    /** The offset to ask for next. */
    log_offset: number;
  }

  export function isRunActive(run: { state: RunState }): boolean {
    return run.state === 'queued' || run.state === 'running';
  }
  export function isActive(operation: IOperation | null | undefined): boolean {
    return (
      !!operation &&
      (operation.state === 'queued' || operation.state === 'running')
    );
  }
}

/** An error answered by the server: its `message`, and the spec `field` at fault if any. */
export class DockerEnvAPIError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly field: string | null = null
  ) {
    super(message);
    this.name = 'DockerEnvAPIError';
  }
}

/** One method per endpoint of the jupyter-docker-env REST API. */
export class DockerEnvAPI {
  constructor(
    readonly serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  status(): Promise<DockerEnv.IStatus> {
    return this.requestAPI('status');
  }

  async listEnvs(): Promise<DockerEnv.IEnv[]> {
    const reply = await this.requestAPI<{ envs: DockerEnv.IEnv[] }>('envs');
    return reply.envs;
  }

  getEnv(name: string): Promise<DockerEnv.IEnv> {
    return this.requestAPI(envPath(name));
  }

  createEnv(spec: DockerEnv.IEnvCreate): Promise<DockerEnv.IEnv> {
    return this.requestAPI('envs', 'POST', spec);
  }

  updateEnv(name: string, spec: DockerEnv.ISpec): Promise<DockerEnv.IEnv> {
    return this.requestAPI(envPath(name), 'PUT', spec);
  }

  async deleteEnv(name: string): Promise<void> {
    await this.requestAPI(envPath(name), 'DELETE');
  }

  /** Starts (or joins) a build; answers 202 with the operation. */
  startBuild(
    name: string,
    options: DockerEnv.IBuildOptions = {}
  ): Promise<DockerEnv.IOperation> {
    return this.requestAPI(`${envPath(name)}/builds`, 'POST', options);
  }

  /** Pushes the environment's image to the configured registry. */
  push(name: string): Promise<DockerEnv.IOperation> {
    return this.requestAPI(`${envPath(name)}/push`, 'POST');
  }

  /** Pulls the environment's image from the configured registry. */
  pull(name: string): Promise<DockerEnv.IOperation> {
    return this.requestAPI(`${envPath(name)}/pull`, 'POST');
  }

  /** Asks the registry whether it has the environment's current image (a round-trip: on demand). */
  registryState(name: string): Promise<DockerEnv.IRegistryState> {
    return this.requestAPI(`${envPath(name)}/registry`);
  }

  /** An operation's state, and its log from `offset`. */
  getOperation(id: string, offset = 0): Promise<DockerEnv.IOperation> {
    return this.requestAPI(`${operationPath(id)}?offset=${offset}`);
  }

  cancelOperation(id: string): Promise<DockerEnv.IOperation> {
    return this.requestAPI(operationPath(id), 'DELETE');
  }

  /** The serving images (of one environment), newest first. */
  async listServing(env?: string): Promise<DockerEnv.IServingImage[]> {
    const query = env ? `?env=${encodeURIComponent(env)}` : '';
    const reply = await this.requestAPI<{ images: DockerEnv.IServingImage[] }>(
      `serving${query}`
    );
    return reply.images;
  }

  /** Starts building a serving image of a built environment; answers 202 with the operation. */
  startServingBuild(
    name: string,
    request: DockerEnv.IServingBuild
  ): Promise<DockerEnv.IOperation> {
    return this.requestAPI(`${envPath(name)}/serving`, 'POST', request);
  }

  /** Pushes a serving image to the configured registry as REGISTRY/ENV-serving. */
  pushServing(id: string): Promise<DockerEnv.IOperation> {
    return this.requestAPI(`${servingPath(id)}/push`, 'POST');
  }

  async deleteServing(id: string): Promise<void> {
    await this.requestAPI(servingPath(id), 'DELETE');
  }

  /** A notebook's recorded environment against the one here (reads the notebook). */
  compareNotebookEnv(path: string): Promise<DockerEnv.INotebookEnv> {
    return this.requestAPI(`notebooks/env?path=${encodeURIComponent(path)}`);
  }

  /** Recreates a notebook's recorded environment; answers 202 with the operation. */
  restoreNotebookEnv(
    path: string,
    name?: string
  ): Promise<DockerEnv.IOperation> {
    return this.requestAPI('notebooks/env/restore', 'POST', {
      path,
      ...(name ? { name } : {})
    });
  }

  startKernel(
    name: string,
    options: DockerEnv.IKernelOptions = {}
  ): Promise<DockerEnv.IKernel> {
    return this.requestAPI(`${envPath(name)}/kernels`, 'POST', options);
  }

  async listRuns(): Promise<DockerEnv.IRun[]> {
    const reply = await this.requestAPI<{ runs: DockerEnv.IRun[] }>('runs');
    return reply.runs;
  }

  getRun(id: string): Promise<DockerEnv.IRun> {
    return this.requestAPI(runPath(id));
  }

  /** Records a run (queued) and starts it; its environment is built first when needed. */
  createRun(run: DockerEnv.IRunCreate): Promise<DockerEnv.IRun> {
    return this.requestAPI('runs', 'POST', run);
  }

  /** A run's state, and its log lines from `offset`. */
  runLog(id: string, offset = 0): Promise<DockerEnv.IRunLog> {
    return this.requestAPI(`${runPath(id)}/log?offset=${offset}`);
  }

  /** Stops a run: SIGTERM, then SIGKILL after a grace period; its partial output stays. */
  cancelRun(id: string): Promise<DockerEnv.IRun> {
    return this.requestAPI(`${runPath(id)}/cancel`, 'POST');
  }

  async deleteRun(id: string): Promise<void> {
    await this.requestAPI(runPath(id), 'DELETE');
  }

  /** Calls `{baseUrl}jupyter-docker-env/api/{endpoint}` and answers its JSON body. */
  private async requestAPI<T>(
    endpoint: string,
    method = 'GET',
    body?: unknown
  ): Promise<T> {
    const url = URLExt.join(
      this.serverSettings.baseUrl,
      'jupyter-docker-env/api',
      endpoint
    );
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        url,
        init,
        this.serverSettings
      );
    } catch (error) {
      throw new DockerEnvAPIError(
        `Cannot reach the Jupyter server: ${String(error)}`,
        0
      );
    }
    const text = await response.text();
    let data: any = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      if (data && typeof data.message === 'string' && data.message) {
        throw new DockerEnvAPIError(
          data.message,
          response.status,
          data.field ?? null
        );
      }
      if (response.status === 404 && endpoint === 'status') {
        throw new DockerEnvAPIError(
          'The jupyter-docker-env server extension is not reachable. ' +
            'Check that it is installed and enabled (`jupyter server extension list`), then restart Jupyter.',
          404
        );
      }
      throw new DockerEnvAPIError(
        `${method} ${endpoint} failed: ${response.status} ${response.statusText}`,
        response.status
      );
    }
    return data as T;
  }
}

function envPath(name: string): string {
  return `envs/${encodeURIComponent(name)}`;
}

/** serving/{id}: the image id's hex digits (a `sha256:` would need escaping in the path). */
function servingPath(id: string): string {
  return `serving/${id.replace(/^sha256:/, '')}`;
}

function operationPath(id: string): string {
  return `operations/${encodeURIComponent(id)}`;
}

function runPath(id: string): string {
  return `runs/${encodeURIComponent(id)}`;
}
