import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from '../api';
import { Banner } from './Banner';
import { Button } from './Button';
import { EnvForm } from './EnvForm';
import { EnvList } from './EnvList';
import { Header } from './Header';
import { StatusFooter } from './StatusFooter';
import { IPanelActions } from './types';

/** How often the list is refreshed while the panel is visible. */
const REFRESH_MS = 10000;

export interface IPanelViewProps {
  api: DockerEnvAPI;
  actions: IPanelActions;
  /** Changes each time the panel is shown. */
  shown: number;
  isVisible: () => boolean;
}

type Editing =
  { mode: 'create' } | { mode: 'edit'; env: DockerEnv.IEnv } | null;

/** The whole panel: status, the form when open, every environment, the footer. */
export function PanelView(props: IPanelViewProps): JSX.Element {
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

  const submit = async (spec: DockerEnv.IEnvCreate): Promise<void> => {
    replaceEnv(
      editing?.mode === 'edit'
        ? await api.updateEnv(editing.env.name, spec)
        : await api.createEnv(spec)
    );
    setEditing(null);
  };

  return (
    <div className="jp-DockerEnv-view" data-testid="docker-env-panel">
      <Header loading={loading} onRefresh={() => void refresh()} />
      {loadError && (
        <Banner
          kind="error"
          testid="load-error"
          message={loadError}
          onRetry={() => void refresh()}
        />
      )}
      {status && !status.engine.available && (
        <Banner
          kind="warning"
          testid="engine-banner"
          title="The Docker engine is not available."
          message={
            status.engine.reason ??
            'Start the Docker engine on the Jupyter server, then retry.'
          }
          onRetry={() => void refresh()}
        />
      )}
      {status && editing === null && (
        <div className="jp-DockerEnv-toolbar">
          <Button
            kind="accept"
            testid="new-env"
            onClick={() => setEditing({ mode: 'create' })}
          >
            New environment
          </Button>
        </div>
      )}
      {status && editing && (
        <EnvForm
          key={editing.mode === 'edit' ? editing.env.name : ''}
          status={status}
          env={editing.mode === 'edit' ? editing.env : undefined}
          onSubmit={submit}
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
        <EnvList
          envs={envs}
          status={status}
          api={api}
          actions={actions}
          onChanged={replaceEnv}
          onEdit={env => setEditing({ mode: 'edit', env })}
          onDeleted={env =>
            setEnvs(previous =>
              (previous ?? []).filter(e => e.name !== env.name)
            )
          }
        />
      )}
      {status && <StatusFooter status={status} />}
    </div>
  );
}
