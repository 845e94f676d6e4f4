import { Dialog, showDialog } from '@jupyterlab/apputils';
import {
  deleteIcon,
  editIcon,
  ReactWidget,
  refreshIcon
} from '@jupyterlab/ui-components';
import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from './api';
import { EnvForm } from './envform';
import { dockerEnvIcon } from './icon';
import { JobView } from './jobview';

export const PANEL_ID = 'jupyter-docker-env-panel';

/** How often the list is refreshed while the panel is visible. */
const REFRESH_MS = 10000;

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
}

/** The left sidebar panel: every Docker environment, its builds and its kernels. */
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
      <DockerEnvView
        api={this.api}
        actions={this.actions}
        shown={this.shown}
        isVisible={() => this.isVisible}
      />
    );
  }

  private shown = 0;
}

interface IViewProps {
  api: DockerEnvAPI;
  actions: IPanelActions;
  /** Changes each time the panel is shown. */
  shown: number;
  isVisible: () => boolean;
}

type Editing =
  { mode: 'create' } | { mode: 'edit'; env: DockerEnv.IEnv } | null;

function DockerEnvView(props: IViewProps): JSX.Element {
  const { api, actions } = props;
  const [status, setStatus] = React.useState<DockerEnv.IStatus | null>(null);
  const [envs, setEnvs] = React.useState<DockerEnv.IEnv[] | null>(null);
  const [loadError, setLoadError] = React.useState<string | null>(null);
  const [editing, setEditing] = React.useState<Editing>(null);
  const [loading, setLoading] = React.useState(false);

  const refresh = React.useCallback(async (): Promise<void> => {
    setLoading(true);
    const [nextStatus, nextEnvs] = await Promise.allSettled([
      api.status(),
      api.listEnvs()
    ]);
    setLoading(false);
    if (nextStatus.status === 'rejected') {
      setLoadError((nextStatus.reason as Error).message);
      return;
    }
    setStatus(nextStatus.value);
    if (nextEnvs.status === 'fulfilled') {
      setEnvs(nextEnvs.value);
      setLoadError(null);
    } else {
      // With the engine down the banner says why already.
      setLoadError(
        nextStatus.value.engine.available
          ? (nextEnvs.reason as Error).message
          : null
      );
    }
  }, [api]);

  React.useEffect(() => {
    void refresh();
  }, [refresh, props.shown]);

  React.useEffect(() => {
    const timer = window.setInterval(() => {
      if (props.isVisible() && !document.hidden) {
        void refresh();
      }
    }, REFRESH_MS);
    return () => window.clearInterval(timer);
  }, [refresh, props.isVisible]);

  const replaceEnv = (env: DockerEnv.IEnv): void => {
    setEnvs(previous => {
      const list = previous ?? [];
      return list.some(e => e.name === env.name)
        ? list.map(e => (e.name === env.name ? env : e))
        : [...list, env];
    });
  };

  const create = async (spec: DockerEnv.IEnvCreate): Promise<void> => {
    const env = await api.createEnv(spec);
    replaceEnv(env);
    setEditing(null);
  };

  const update = async (name: string, spec: DockerEnv.ISpec): Promise<void> => {
    replaceEnv(await api.updateEnv(name, spec));
    setEditing(null);
  };

  const engineDown = status !== null && !status.engine.available;

  return (
    <div className="jp-DockerEnv-view" data-testid="docker-env-panel">
      <header className="jp-DockerEnv-header">
        <h2 className="jp-DockerEnv-title">Docker environments</h2>
        <button
          type="button"
          className="jp-DockerEnv-iconButton"
          title="Refresh"
          aria-label="Refresh"
          data-testid="refresh"
          disabled={loading}
          onClick={() => void refresh()}
        >
          <refreshIcon.react tag="span" />
        </button>
      </header>
      {loadError && (
        <div
          className="jp-DockerEnv-banner jp-DockerEnv-error"
          data-testid="load-error"
          role="alert"
        >
          <div>{loadError}</div>
          <button
            type="button"
            className="jp-DockerEnv-button"
            onClick={() => void refresh()}
          >
            Retry
          </button>
        </div>
      )}
      {engineDown && (
        <div
          className="jp-DockerEnv-banner jp-DockerEnv-warning"
          data-testid="engine-banner"
          role="alert"
        >
          <strong>The Docker engine is not available.</strong>
          <div>
            {status.engine.reason ??
              'Start the Docker engine on the Jupyter server, then retry.'}
          </div>
          <button
            type="button"
            className="jp-DockerEnv-button"
            data-testid="engine-retry"
            onClick={() => void refresh()}
          >
            Retry
          </button>
        </div>
      )}
      {status && (
        <div className="jp-DockerEnv-toolbar">
          {editing === null && (
            <button
              type="button"
              className="jp-mod-styled jp-mod-accept"
              data-testid="new-env"
              onClick={() => setEditing({ mode: 'create' })}
            >
              New environment
            </button>
          )}
        </div>
      )}
      {status && editing?.mode === 'create' && (
        <EnvForm
          status={status}
          onSubmit={create}
          onCancel={() => setEditing(null)}
        />
      )}
      {status && editing?.mode === 'edit' && (
        <EnvForm
          key={editing.env.name}
          status={status}
          env={editing.env}
          onSubmit={spec => update(editing.env.name, spec)}
          onCancel={() => setEditing(null)}
        />
      )}
      {envs !== null && envs.length === 0 && editing === null && (
        <p className="jp-DockerEnv-note" data-testid="no-envs">
          No environments yet. Create one to build an image and run notebooks in
          it.
        </p>
      )}
      {status && envs && (
        <ul className="jp-DockerEnv-list" data-testid="env-list">
          {envs.map(env => (
            <EnvCard
              key={env.name}
              env={env}
              status={status}
              api={api}
              actions={actions}
              onChanged={replaceEnv}
              onEdit={() => setEditing({ mode: 'edit', env })}
              onDeleted={() =>
                setEnvs(previous =>
                  (previous ?? []).filter(e => e.name !== env.name)
                )
              }
            />
          ))}
        </ul>
      )}
      {status && (
        <footer className="jp-DockerEnv-footer" data-testid="status-footer">
          {status.engine.available
            ? `Docker ${status.engine.version ?? ''}`.trim()
            : 'Docker engine unavailable'}
          {' · GPU '}
          {status.gpu.available ? 'available' : 'not available'}
          {status.registry ? ` · registry ${status.registry}` : ''}
        </footer>
      )}
    </div>
  );
}

interface IEnvCardProps {
  env: DockerEnv.IEnv;
  status: DockerEnv.IStatus;
  api: DockerEnvAPI;
  actions: IPanelActions;
  onChanged: (env: DockerEnv.IEnv) => void;
  onEdit: () => void;
  onDeleted: () => void;
}

const STATE_LABELS: { [state in DockerEnv.EnvState]: string } = {
  not_built: 'not built',
  building: 'building',
  built: 'built',
  failed: 'failed',
  outdated: 'outdated'
};

function formatSize(bytes: number | undefined): string {
  if (bytes === undefined || bytes === null) {
    return '—';
  }
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit > 0 ? 1 : 0)} ${units[unit]}`;
}

/** One environment: its state, spec, image, lock, job and actions. */
function EnvCard(props: IEnvCardProps): JSX.Element {
  const { env, status, api, actions, onChanged } = props;
  const [noCache, setNoCache] = React.useState(false);
  const [fromLock, setFromLock] = React.useState(false);
  const [resources, setResources] = React.useState({
    cpus: '',
    memory: '',
    gpus: ''
  });
  const [actionError, setActionError] = React.useState<string | null>(null);
  const [busy, setBusy] = React.useState(false);
  const jobActive = DockerEnv.isActive(env.job);
  const engineUp = status.engine.available;
  const hasLock =
    !!env.lock && Object.values(env.lock).some(list => list.length > 0);

  const run = async (action: () => Promise<void>): Promise<void> => {
    setBusy(true);
    setActionError(null);
    try {
      await action();
    } catch (error) {
      setActionError((error as Error).message);
    } finally {
      setBusy(false);
    }
  };

  const startJob = (start: () => Promise<DockerEnv.IJob>) =>
    run(async () => {
      const job = await start();
      onChanged({
        ...env,
        job,
        state: job.kind === 'build' ? 'building' : env.state
      });
    });

  const build = () =>
    startJob(() =>
      api.startBuild(env.name, {
        ...(noCache ? { no_cache: true } : {}),
        ...(fromLock ? { from_lock: true } : {})
      })
    );

  const jobFinished = async (job: DockerEnv.IJob): Promise<void> => {
    try {
      onChanged(await api.getEnv(env.name));
    } catch (error) {
      setActionError((error as Error).message);
    }
    if (job.state === 'succeeded' && job.kind !== 'push') {
      await actions.refreshKernelSpecs();
    }
  };

  /** Opens on a kernel of its own size when the user set resources, else on the kernel spec. */
  const open = (
    opener: (env: DockerEnv.IEnv, kernel?: DockerEnv.IKernel) => Promise<void>
  ) =>
    run(async () => {
      const options: DockerEnv.IKernelOptions = {};
      if (resources.cpus.trim()) {
        options.cpus = Number(resources.cpus);
      }
      if (resources.memory.trim()) {
        options.memory = resources.memory.trim();
      }
      if (resources.gpus.trim()) {
        options.gpus = resources.gpus.trim();
      }
      const sized = Object.keys(options).length > 0;
      await opener(
        env,
        sized ? await api.startKernel(env.name, options) : undefined
      );
    });

  const remove = async (): Promise<void> => {
    const answer = await showDialog({
      title: `Delete environment ${env.name}?`,
      body: `This deletes its folder ${env.path} and its Docker images. Notebooks that use its kernel will need another kernel.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (answer.button.accept) {
      await run(async () => {
        await api.deleteEnv(env.name);
        props.onDeleted();
        await actions.refreshKernelSpecs();
      });
    }
  };

  const state = jobActive && env.job?.kind === 'build' ? 'building' : env.state;

  return (
    <li
      className="jp-DockerEnv-env"
      data-testid={`env-${env.name}`}
      data-state={state}
    >
      <div className="jp-DockerEnv-envHeader">
        <span
          className="jp-DockerEnv-envName"
          title={env.display_name ?? env.name}
        >
          {env.name}
        </span>
        <span
          className={`jp-DockerEnv-badge jp-DockerEnv-badge-${state}`}
          data-testid="env-state"
        >
          {STATE_LABELS[state] ?? state}
        </span>
        {env.readonly && (
          <span className="jp-DockerEnv-badge" title="Set up by the admin">
            read-only
          </span>
        )}
        {!env.readonly && env.kind === 'spec' && (
          <button
            type="button"
            className="jp-DockerEnv-iconButton"
            title={`Edit the spec of ${env.name}`}
            aria-label={`Edit ${env.name}`}
            data-testid="edit"
            disabled={busy}
            onClick={props.onEdit}
          >
            <editIcon.react tag="span" />
          </button>
        )}
        {!env.readonly && (
          <button
            type="button"
            className="jp-DockerEnv-iconButton"
            title={`Delete ${env.name} and its images`}
            aria-label={`Delete ${env.name}`}
            data-testid="delete"
            disabled={busy || jobActive}
            onClick={remove}
          >
            <deleteIcon.react tag="span" />
          </button>
        )}
      </div>
      <dl className="jp-DockerEnv-meta">
        <dt>Base</dt>
        <dd data-testid="env-base-image">{env.base ?? '—'}</dd>
        <dt>Size</dt>
        <dd data-testid="env-size">{formatSize(env.image?.size)}</dd>
        <dt>GPU</dt>
        <dd data-testid="env-gpu-flag">{env.gpu ? 'yes' : 'no'}</dd>
        {env.kind !== 'spec' && (
          <>
            <dt>From</dt>
            <dd>{env.kind}</dd>
          </>
        )}
      </dl>
      {env.error && (
        <div
          className="jp-DockerEnv-error"
          data-testid="env-error"
          role="alert"
        >
          <strong>Invalid spec:</strong> {env.error}
        </div>
      )}
      {env.state === 'outdated' && !jobActive && (
        <div className="jp-DockerEnv-note">
          The spec changed since the last build: build again to use it.
        </div>
      )}
      <div className="jp-DockerEnv-buttons">
        {env.state === 'built' || env.state === 'outdated' ? (
          <>
            <button
              type="button"
              className="jp-mod-styled jp-mod-accept"
              data-testid="open-notebook"
              onClick={() => open(actions.openNotebook)}
            >
              Open notebook
            </button>
            <button
              type="button"
              className="jp-DockerEnv-button"
              data-testid="open-console"
              onClick={() => open(actions.openConsole)}
            >
              Open console
            </button>
            <details className="jp-DockerEnv-resources">
              <summary>Kernel resources</summary>
              <div className="jp-DockerEnv-resourceFields">
                <label>
                  CPUs
                  <input
                    className="jp-DockerEnv-input"
                    data-testid="kernel-cpus"
                    type="number"
                    min="0"
                    step="0.5"
                    placeholder="no limit"
                    value={resources.cpus}
                    onChange={e =>
                      setResources({ ...resources, cpus: e.target.value })
                    }
                  />
                </label>
                <label>
                  Memory
                  <input
                    className="jp-DockerEnv-input"
                    data-testid="kernel-memory"
                    type="text"
                    placeholder="e.g. 2g"
                    value={resources.memory}
                    onChange={e =>
                      setResources({ ...resources, memory: e.target.value })
                    }
                  />
                </label>
                {env.gpu && (
                  <label>
                    GPUs
                    <input
                      className="jp-DockerEnv-input"
                      data-testid="kernel-gpus"
                      type="text"
                      placeholder="all, 1, or 0,1"
                      value={resources.gpus}
                      onChange={e =>
                        setResources({ ...resources, gpus: e.target.value })
                      }
                    />
                  </label>
                )}
              </div>
              <div className="jp-DockerEnv-hint">
                For the next notebook or console opened here.
              </div>
            </details>
          </>
        ) : null}
      </div>
      <div className="jp-DockerEnv-buttons">
        <button
          type="button"
          className="jp-DockerEnv-button"
          data-testid="build"
          disabled={busy || jobActive || !engineUp || !!env.error}
          title={
            !engineUp
              ? 'The Docker engine is not available'
              : env.error
                ? 'Fix the spec first'
                : 'Build the image of this environment'
          }
          onClick={build}
        >
          {env.image ? 'Rebuild' : 'Build'}
        </button>
        <label className="jp-DockerEnv-checkbox">
          <input
            type="checkbox"
            data-testid="no-cache"
            checked={noCache}
            onChange={e => setNoCache(e.target.checked)}
          />{' '}
          without cache
        </label>
        {hasLock && (
          <label
            className="jp-DockerEnv-checkbox"
            title="Install the exact versions of the lock"
          >
            <input
              type="checkbox"
              data-testid="from-lock"
              checked={fromLock}
              onChange={e => setFromLock(e.target.checked)}
            />{' '}
            from lock
          </label>
        )}
      </div>
      <div className="jp-DockerEnv-buttons">
        {status.registry && (
          <>
            <button
              type="button"
              className="jp-DockerEnv-button"
              data-testid="push"
              disabled={busy || jobActive || !env.image || !engineUp}
              title={`Push the image to ${status.registry}`}
              onClick={() => startJob(() => api.push(env.name))}
            >
              Push
            </button>
            <button
              type="button"
              className="jp-DockerEnv-button"
              data-testid="pull"
              disabled={busy || jobActive || !engineUp}
              title={`Pull the image from ${status.registry}`}
              onClick={() => startJob(() => api.pull(env.name))}
            >
              Pull
            </button>
            <span className="jp-DockerEnv-hint" data-testid="registry-state">
              {env.registry?.available === true
                ? 'in the registry'
                : env.registry?.available === false
                  ? 'not in the registry'
                  : ''}
            </span>
          </>
        )}
      </div>
      {actionError && (
        <div
          className="jp-DockerEnv-error"
          data-testid="action-error"
          role="alert"
        >
          {actionError}
        </div>
      )}
      {env.job && (
        <JobView
          key={env.job.id}
          api={api}
          job={env.job}
          onFinished={jobFinished}
        />
      )}
      <details className="jp-DockerEnv-details">
        <summary>Details</summary>
        <dl className="jp-DockerEnv-meta" data-testid="env-details">
          <dt>Kernel</dt>
          <dd title={env.kernel_name}>{env.display_name ?? env.kernel_name}</dd>
          <dt>Folder</dt>
          <dd>{env.path}</dd>
          {env.image && (
            <>
              <dt>Image</dt>
              <dd data-testid="image-tag">{env.image.tag}</dd>
              <dt>Id</dt>
              <dd title={env.image.id}>{env.image.id.slice(0, 19)}</dd>
              {env.image.digest && (
                <>
                  <dt>Digest</dt>
                  <dd title={env.image.digest}>{env.image.digest}</dd>
                </>
              )}
              {env.image.created && (
                <>
                  <dt>Created</dt>
                  <dd>{env.image.created}</dd>
                </>
              )}
            </>
          )}
          {env.registry?.image && (
            <>
              <dt>Registry</dt>
              <dd>{env.registry.image}</dd>
            </>
          )}
          {!!env.pip?.length && (
            <>
              <dt>pip</dt>
              <dd>{env.pip.join(', ')}</dd>
            </>
          )}
          {!!env.apt?.length && (
            <>
              <dt>apt</dt>
              <dd>{env.apt.join(', ')}</dd>
            </>
          )}
          {!!env.conda?.length && (
            <>
              <dt>conda</dt>
              <dd>{env.conda.join(', ')}</dd>
            </>
          )}
        </dl>
        {hasLock && env.lock && (
          <details className="jp-DockerEnv-lock" data-testid="env-lock">
            <summary>Lock (exact versions)</summary>
            {Object.entries(env.lock)
              .filter(([, list]) => list.length > 0)
              .map(([manager, list]) => (
                <div key={manager}>
                  <div className="jp-DockerEnv-lockManager">{manager}</div>
                  <pre className="jp-DockerEnv-lockList">{list.join('\n')}</pre>
                </div>
              ))}
          </details>
        )}
      </details>
    </li>
  );
}
