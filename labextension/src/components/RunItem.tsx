import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from '../api';
import { Button } from './Button';
import { LogView } from './LogView';
import { ErrorMessage, Note } from './Messages';
import { useFollow } from './useFollow';

const STATE_LABELS: { [state in DockerEnv.RunState]: string } = {
  queued: 'queued',
  running: 'running',
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'cancelled',
  timed_out: 'timed out'
};

/** The environment badge colour that says the same. */
const BADGES: { [state in DockerEnv.RunState]: string } = {
  queued: 'building',
  running: 'building',
  succeeded: 'built',
  failed: 'failed',
  cancelled: 'outdated',
  timed_out: 'failed'
};

export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) {
    return '';
  }
  if (seconds < 60) {
    return `${seconds.toFixed(1)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  return minutes < 60
    ? `${minutes} min ${Math.round(seconds % 60)} s`
    : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** What a run runs, in a line. */
export function described(run: DockerEnv.IRun): string {
  return run.notebook ?? run.command.join(' ');
}

export interface IRunItemProps {
  run: DockerEnv.IRun;
  api: DockerEnvAPI;
  busy: boolean;
  onOpen: (path: string) => void;
  onCancel: () => void;
  onRerun: () => void;
  onRemove: () => void;
  /** Called once when the run, seen active, ends. */
  onFinished: () => void;
}

/** One run: state, what, duration; its log (live while it runs); open, cancel, re-run, remove. */
export function RunItem(props: IRunItemProps): JSX.Element {
  const { run, api } = props;
  const followed = useFollow<DockerEnv.IRunLog>({
    initial: { id: run.id, state: run.state, log: [], log_offset: 0 },
    fetch: offset => api.runLog(run.id, offset),
    isActive: DockerEnv.isRunActive,
    onFinished: props.onFinished,
    intervalMs: 1000
  });
  const active = DockerEnv.isRunActive(run);
  const output = run.output;
  const attempts = run.retries
    ? ` · attempt ${run.attempt} of ${run.retries + 1}`
    : '';
  return (
    <li
      className="jp-DockerEnv-run"
      data-testid={`run-${run.id}`}
      data-state={run.state}
    >
      <div className="jp-DockerEnv-runHeader">
        <span
          className={`jp-DockerEnv-badge jp-DockerEnv-badge-${BADGES[run.state]}`}
          data-testid="run-state"
        >
          {STATE_LABELS[run.state] ?? run.state}
        </span>
        <span className="jp-DockerEnv-runWhat" title={described(run)}>
          {described(run)}
        </span>
        <span className="jp-DockerEnv-note" data-testid="run-duration">
          {duration(run.duration)}
        </span>
      </div>
      <Note>
        {run.started
          ? `started ${new Date(run.started * 1000).toLocaleString()}`
          : 'preparing'}
        {run.exit_code !== null ? ` · exit code ${run.exit_code}` : ''}
        {attempts}
        {Object.keys(run.parameters).length
          ? ` · ${Object.entries(run.parameters)
              .map(([k, value]) => `${k}=${JSON.stringify(value)}`)
              .join(', ')}`
          : ''}
      </Note>
      {run.reason && (run.state === 'failed' || run.state === 'timed_out') && (
        <ErrorMessage testid="run-reason">{run.reason}</ErrorMessage>
      )}
      <div className="jp-DockerEnv-buttons">
        {output && run.state !== 'queued' && (
          <Button
            kind="link"
            testid="run-open-output"
            onClick={() => props.onOpen(output)}
          >
            Open executed notebook
          </Button>
        )}
        {active ? (
          <Button testid="run-cancel" onClick={props.onCancel}>
            Cancel
          </Button>
        ) : (
          <>
            <Button
              testid="run-rerun"
              disabled={props.busy}
              onClick={props.onRerun}
              title="Start it again with the same settings"
            >
              Re-run
            </Button>
            <Button testid="run-remove" onClick={props.onRemove}>
              Remove
            </Button>
          </>
        )}
      </div>
      {followed.error && <ErrorMessage>{followed.error}</ErrorMessage>}
      <LogView
        lines={followed.log}
        label="log"
        testid="run-log"
        initiallyShown={active}
      />
    </li>
  );
}
