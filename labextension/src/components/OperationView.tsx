import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from '../api';
import { LogView } from './LogView';
import { ErrorMessage, Note } from './Messages';
import { ProgressView } from './ProgressView';
import { useFollow } from './useFollow';

export interface IOperationViewProps {
  api: DockerEnvAPI;
  /** As last seen in the environment. Mount the view keyed by its id. */
  operation: DockerEnv.IOperation;
  /** Called once when an operation seen running ends. */
  onFinished: (operation: DockerEnv.IOperation) => void;
}

const VERBS: { [kind in DockerEnv.OperationKind]: string } = {
  build: 'Build',
  push: 'Push',
  pull: 'Pull',
  'serving-build': 'Serving build',
  'serving-push': 'Push',
  restore: 'Restore'
};

/** The last error lines of pip, apt or conda in a log: usually the reason a step failed. */
export function errorLines(log: string[], error?: string | null): string[] {
  return log
    .filter(line => /^\s*(ERROR:|E: |error:|PackagesNotFoundError)/.test(line))
    .filter(line => !error || !line.includes(error))
    .slice(-3);
}

/** One line of why an operation failed: the instruction, the error, a tool's error line. */
function FailureLine(props: {
  text?: string | null;
  code?: boolean;
  testid?: string;
}): JSX.Element | null {
  if (!props.text) {
    return null;
  }
  return props.code ? (
    <code className="jp-DockerEnv-errorLine" data-testid={props.testid}>
      {props.text}
    </code>
  ) : (
    <div className="jp-DockerEnv-errorText" data-testid={props.testid}>
      {props.text}
    </div>
  );
}

/** A build, push or pull: its progress, its live log, and why it failed. */
export function OperationView(props: IOperationViewProps): JSX.Element {
  const { api } = props;
  const followed = useFollow({
    initial: props.operation,
    fetch: offset => api.getOperation(props.operation.id, offset),
    isActive: DockerEnv.isActive,
    onFinished: props.onFinished
  });
  const { item: operation, log } = followed;
  const [cancelling, setCancelling] = React.useState(false);
  const [cancelError, setCancelError] = React.useState<string | null>(null);

  const cancel = async (): Promise<void> => {
    setCancelling(true);
    try {
      followed.setItem(await api.cancelOperation(operation.id));
    } catch (error) {
      setCancelError((error as Error).message);
    }
  };

  const verb = VERBS[operation.kind] ?? operation.kind;
  const total = operation.total_steps ?? 0;
  const progress =
    operation.progress ??
    (total > 0 && operation.step ? (operation.step - 1) / total : undefined);
  const error = followed.error ?? cancelError;

  return (
    <div
      className="jp-DockerEnv-operation"
      data-testid="operation"
      data-operation-kind={operation.kind}
      data-operation-state={operation.state}
    >
      {DockerEnv.isActive(operation) && (
        <ProgressView
          testid="operation-progress"
          progress={progress}
          text={
            operation.state === 'queued'
              ? `${verb} queued`
              : total > 0 && operation.step
                ? `${verb}: step ${operation.step} of ${total}`
                : `${verb} running`
          }
          onCancel={cancel}
          cancelling={cancelling}
        />
      )}
      {operation.state === 'failed' && (
        <ErrorMessage testid="operation-failure">
          <strong>{verb} failed</strong>
          <FailureLine
            code
            testid="operation-failed-step"
            text={operation.failed_step}
          />
          <FailureLine testid="operation-error" text={operation.error} />
          {errorLines(log, operation.error).map((line, i) => (
            <FailureLine key={i} code text={line} />
          ))}
        </ErrorMessage>
      )}
      {operation.state === 'succeeded' && operation.kind !== 'build' && (
        <Note testid="operation-done">
          {verb} done{operation.image ? `: ${operation.image}` : '.'}
        </Note>
      )}
      {operation.state === 'cancelled' && <Note>{verb} cancelled.</Note>}
      {error && <ErrorMessage>{error}</ErrorMessage>}
      <LogView
        lines={log}
        label={`${verb.toLowerCase()} log`}
        testid="operation-log"
        initiallyShown={
          DockerEnv.isActive(props.operation) ||
          props.operation.state === 'failed'
        }
      />
    </div>
  );
}
