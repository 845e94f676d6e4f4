import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from './api';

/** How often a running job is polled. */
const POLL_MS = 500;

export interface IJobViewProps {
  api: DockerEnvAPI;
  /** The job as last seen in the environment; its log is fetched again from offset 0. */
  job: DockerEnv.IJob;
  /** Called once when a job seen running ends. */
  onFinished: (job: DockerEnv.IJob) => void;
}

const VERBS: { [kind in DockerEnv.JobKind]: string } = {
  build: 'Build',
  push: 'Push',
  pull: 'Pull'
};

/** Terminal colour codes that build tools write into their output. */
const ESC = String.fromCharCode(27);
const ANSI_ESCAPE = new RegExp(`${ESC}\\[[0-9;]*[A-Za-z]`, 'g');

/** The last error lines of pip, apt or conda in a log: usually the reason a step failed. */
function errorLines(log: string[], error?: string | null): string[] {
  return log
    .filter(line => /^\s*(ERROR:|E: |error:|PackagesNotFoundError)/.test(line))
    .filter(line => !error || !line.includes(error))
    .slice(-3);
}

/** A job's progress, its live log, and why it failed. Mount it keyed by job id. */
export function JobView(props: IJobViewProps): JSX.Element {
  const { api, onFinished } = props;
  const [job, setJob] = React.useState<DockerEnv.IJob>(props.job);
  const [log, setLog] = React.useState<string[]>([]);
  const [pollError, setPollError] = React.useState<string | null>(null);
  const [cancelling, setCancelling] = React.useState(false);
  const active = DockerEnv.isActive(job);
  const [showLog, setShowLog] = React.useState(
    DockerEnv.isActive(props.job) || props.job.state === 'failed'
  );
  const onFinishedRef = React.useRef(onFinished);
  onFinishedRef.current = onFinished;

  React.useEffect(() => {
    let stopped = false;
    let timer: number | undefined;
    let offset = 0;
    const wasActive = DockerEnv.isActive(props.job);
    const poll = async (): Promise<void> => {
      let next: DockerEnv.IJob;
      try {
        next = await api.getJob(props.job.id, offset);
      } catch (error) {
        if (stopped) {
          return;
        }
        setPollError(String((error as Error).message ?? error));
        timer = window.setTimeout(poll, POLL_MS * 4);
        return;
      }
      if (stopped) {
        return;
      }
      setPollError(null);
      offset = next.log_offset;
      if (next.log.length) {
        const lines = next.log.map(line => line.replace(ANSI_ESCAPE, ''));
        setLog(previous => previous.concat(lines));
      }
      setJob(next);
      if (DockerEnv.isActive(next)) {
        timer = window.setTimeout(poll, POLL_MS);
      } else if (wasActive) {
        onFinishedRef.current(next);
      }
    };
    void poll();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, [api, props.job.id]);

  const logRef = React.useRef<HTMLPreElement>(null);
  const stickToBottom = React.useRef(true);
  React.useLayoutEffect(() => {
    const node = logRef.current;
    if (node && stickToBottom.current) {
      node.scrollTop = node.scrollHeight;
    }
  }, [log, showLog]);

  const cancel = async (): Promise<void> => {
    setCancelling(true);
    try {
      setJob(await api.cancelJob(job.id));
    } catch (error) {
      setPollError(String((error as Error).message ?? error));
    }
  };

  const verb = VERBS[job.kind] ?? job.kind;
  const total = job.total_steps ?? 0;
  const progress =
    job.progress ??
    (total > 0 && job.step ? (job.step - 1) / total : undefined);

  return (
    <div
      className={`jp-DockerEnv-job jp-DockerEnv-job-${job.state}`}
      data-testid="job"
      data-job-state={job.state}
    >
      {active && (
        <div className="jp-DockerEnv-progressRow">
          <div
            className="jp-DockerEnv-progress"
            data-testid="job-progress"
            role="progressbar"
            aria-label={`${verb} progress`}
            aria-valuemin={0}
            aria-valuemax={100}
            aria-valuenow={
              progress === undefined ? undefined : Math.round(progress * 100)
            }
          >
            <div
              className={
                progress === undefined
                  ? 'jp-DockerEnv-progressBar jp-mod-indeterminate'
                  : 'jp-DockerEnv-progressBar'
              }
              style={
                progress === undefined
                  ? undefined
                  : { width: `${Math.max(2, Math.round(progress * 100))}%` }
              }
            />
          </div>
          <span className="jp-DockerEnv-progressText" data-testid="job-step">
            {job.state === 'queued'
              ? `${verb} queued`
              : total > 0 && job.step
                ? `${verb}: step ${job.step} of ${total}`
                : `${verb} running`}
          </span>
          <button
            type="button"
            className="jp-DockerEnv-button"
            data-testid="job-cancel"
            onClick={cancel}
            disabled={cancelling}
          >
            Cancel
          </button>
        </div>
      )}
      {job.state === 'failed' && (
        <div
          className="jp-DockerEnv-error"
          data-testid="job-failure"
          role="alert"
        >
          <strong>{verb} failed</strong>
          {job.failed_step && (
            <code
              className="jp-DockerEnv-errorLine"
              data-testid="job-failed-step"
            >
              {job.failed_step}
            </code>
          )}
          {job.error && (
            <div className="jp-DockerEnv-errorText" data-testid="job-error">
              {job.error}
            </div>
          )}
          {errorLines(log, job.error).map((line, i) => (
            <code key={i} className="jp-DockerEnv-errorLine">
              {line}
            </code>
          ))}
        </div>
      )}
      {job.state === 'cancelled' && (
        <div className="jp-DockerEnv-note">{verb} cancelled.</div>
      )}
      {pollError && (
        <div className="jp-DockerEnv-error" role="alert">
          {pollError}
        </div>
      )}
      <button
        type="button"
        className="jp-DockerEnv-linkButton"
        aria-expanded={showLog}
        data-testid="job-log-toggle"
        onClick={() => setShowLog(!showLog)}
      >
        {showLog ? 'Hide' : 'Show'} {verb.toLowerCase()} log ({log.length}{' '}
        lines)
      </button>
      {showLog && (
        <pre
          ref={logRef}
          className="jp-DockerEnv-log"
          data-testid="job-log"
          onScroll={event => {
            const node = event.currentTarget;
            stickToBottom.current =
              node.scrollHeight - node.scrollTop - node.clientHeight < 24;
          }}
        >
          {log.join('\n')}
        </pre>
      )}
    </div>
  );
}
