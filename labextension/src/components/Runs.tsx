import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { DockerEnv } from '../api';
import { ErrorMessage, Note } from './Messages';
import { RunForm } from './RunForm';
import { described, RunItem } from './RunItem';
import { Section } from './Section';
import { IEnvSectionProps } from './types';

/** How often the list is refreshed while a run is active, and else (runs started elsewhere). */
const ACTIVE_MS = 1500;
const IDLE_MS = 10000;
/** The most recent runs shown. */
const SHOWN = 10;

/** The same run again: what, where and with which resources (a new output notebook). */
function again(run: DockerEnv.IRun): DockerEnv.IRunCreate {
  const what: DockerEnv.IRunCreate = run.notebook
    ? { env: run.env, notebook: run.notebook, parameters: run.parameters }
    : { env: run.env, command: run.command, cwd: run.cwd };
  const set = <T,>(value: T | null) => (value === null ? undefined : value);
  return {
    ...what,
    cpus: set(run.cpus),
    memory: set(run.memory),
    gpus: set(run.gpus),
    timeout: set(run.timeout),
    retries: run.retries,
    snapshot: run.snapshot
  };
}

/** Training runs on this environment: start one, follow them, open what they produced. */
export function Runs(props: IEnvSectionProps): JSX.Element | null {
  if (props.env.error) {
    return null;
  }
  return (
    <Section title="Runs" testid="runs">
      <RunsBody {...props} />
    </Section>
  );
}

/** The open Runs section: the form and the live list (polled only while open). */
function RunsBody(props: IEnvSectionProps): JSX.Element {
  const { env, api, actions, run } = props;
  const [runs, setRuns] = React.useState<DockerEnv.IRun[] | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [tick, setTick] = React.useState(0);

  const load = React.useCallback(async (): Promise<void> => {
    try {
      const all = await api.listRuns();
      setRuns(all.filter(r => r.env === env.name));
      setError(null);
    } catch (reason) {
      setError((reason as Error).message);
    }
  }, [api, env.name]);

  const anyActive = (runs ?? []).some(DockerEnv.isRunActive);
  React.useEffect(() => {
    void load();
    const timer = window.setTimeout(
      () => setTick(t => t + 1),
      anyActive ? ACTIVE_MS : IDLE_MS
    );
    return () => window.clearTimeout(timer);
  }, [load, tick, anyActive]);

  /** A new run goes on top; a known one is updated where it is. */
  const replace = (next: DockerEnv.IRun): void =>
    setRuns(previous => {
      const list = previous ?? [];
      return list.some(r => r.id === next.id)
        ? list.map(r => (r.id === next.id ? next : r))
        : [next, ...list];
    });

  const remove = async (target: DockerEnv.IRun): Promise<void> => {
    const answer = await showDialog({
      title: `Remove run ${target.id}?`,
      body: `This forgets its record and log (${described(target)}). An executed notebook stays in the workspace.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Remove' })]
    });
    if (answer.button.accept) {
      await run(async () => {
        await api.deleteRun(target.id);
        setRuns(previous => (previous ?? []).filter(r => r.id !== target.id));
      });
    }
  };

  /** A run that ended may have built the environment first: the card shows it built. */
  const finished = async (): Promise<void> => {
    await load();
    if (env.state !== 'built') {
      await props.refreshEnv();
      await actions.refreshKernelSpecs();
    }
  };

  /** A new run may build the environment first: the card follows that build. */
  const started = (next: DockerEnv.IRun): void => {
    replace(next);
    if (env.state !== 'built') {
      window.setTimeout(() => void props.refreshEnv(), 1000);
    }
  };

  const shown = (runs ?? []).slice(0, SHOWN);
  return (
    <>
      <RunForm {...props} onStarted={started} />
      {error && <ErrorMessage testid="runs-error">{error}</ErrorMessage>}
      {runs !== null && runs.length === 0 && (
        <Note testid="no-runs">No runs of {env.name} yet.</Note>
      )}
      <ul className="jp-DockerEnv-runs" data-testid="run-list">
        {shown.map(item => (
          <RunItem
            key={item.id}
            run={item}
            api={api}
            busy={props.busy}
            onOpen={path => void run(() => actions.openPath(path))}
            onCancel={() =>
              void run(async () => replace(await api.cancelRun(item.id)))
            }
            onRerun={() =>
              void run(async () => started(await api.createRun(again(item))))
            }
            onRemove={() => void remove(item)}
            onFinished={() => void finished()}
          />
        ))}
      </ul>
      {runs !== null && runs.length > SHOWN && (
        <Note>
          {runs.length - SHOWN} older runs: `jupyter docker-env runs` lists them
          all.
        </Note>
      )}
    </>
  );
}
