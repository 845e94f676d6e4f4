import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from '../api';
import { Button } from './Button';
import { ErrorMessage, Note } from './Messages';
import { MetaList } from './MetaList';
import { OperationView } from './OperationView';
import { useAction } from './useAction';

export interface INotebookEnvViewProps {
  api: DockerEnvAPI;
  /** The notebook's recorded environment against the one here (GET notebooks/env). */
  comparison: DockerEnv.INotebookEnv;
  /** The notebook's kernel now, if it has one. */
  kernelName: () => string | null;
  /** Switches the notebook to another kernel. */
  useKernel: (name: string) => Promise<void>;
  /** Makes JupyterLab list a new environment's kernel. */
  refreshKernelSpecs: () => Promise<void>;
  /** The notebook runs on the environment the user chose: stop warning about it. */
  onSettled: () => void;
}

/** The lists of packages a restore installs, as the lock view shows a lock's. */
const PACKAGES: { key: 'pip' | 'apt' | 'conda'; title: string }[] = [
  { key: 'pip', title: 'pip' },
  { key: 'apt', title: 'apt' },
  { key: 'conda', title: 'conda' }
];

/** What recreating would install and from where: shown before anything runs. */
function RestorePlanView(props: { plan: DockerEnv.IRestorePlan }): JSX.Element {
  const { plan } = props;
  const files = Object.entries(plan.files);
  return (
    <div className="jp-DockerEnv-lock" data-testid="notebook-env-plan">
      <div className="jp-DockerEnv-lockTitle">
        Recreating it creates environment {plan.name}
      </div>
      <MetaList
        items={[
          {
            label: 'Base',
            value: plan.base ?? 'the FROM of its Dockerfile',
            testid: 'notebook-env-base'
          },
          {
            label: 'Digest',
            value: plan.base_digest,
            title: plan.base_digest ?? undefined
          },
          {
            label: 'From',
            value: plan.source
              ? `the registry by digest (${plan.source}), else built with the recorded versions`
              : 'built with the recorded versions',
            testid: 'notebook-env-source'
          }
        ]}
      />
      {PACKAGES.filter(({ key }) => plan[key].length > 0).map(
        ({ key, title }) => (
          <details
            key={key}
            className="jp-DockerEnv-lockGroup"
            data-testid={`notebook-env-${key}`}
          >
            <summary>
              {title} ({plan[key].length})
            </summary>
            <pre className="jp-DockerEnv-lockList">{plan[key].join('\n')}</pre>
          </details>
        )
      )}
      {files.length > 0 && (
        <details
          className="jp-DockerEnv-lockGroup"
          data-testid="notebook-env-files"
        >
          <summary>files ({files.map(([name]) => name).join(', ')})</summary>
          {files.map(([name, text]) => (
            <React.Fragment key={name}>
              <div className="jp-DockerEnv-hint">{name}</div>
              <pre className="jp-DockerEnv-lockList">{text}</pre>
            </React.Fragment>
          ))}
        </details>
      )}
    </div>
  );
}

/**
 * A notebook whose recorded environment is missing here, or differs: what differs, in words;
 * what recreating it would install; and the choices (recreate it, or keep the one here).
 */
export function NotebookEnvView(props: INotebookEnvViewProps): JSX.Element {
  const { api, comparison } = props;
  const plan = comparison.restore ?? null;
  const [operation, setOperation] = React.useState<DockerEnv.IOperation | null>(
    null
  );
  const [done, setDone] = React.useState<string | null>(null);
  const { busy, error, run: act } = useAction();

  const switchTo = async (kernelName: string, name: string): Promise<void> => {
    if (props.kernelName() !== kernelName) {
      await props.useKernel(kernelName);
    }
    setDone(
      `The notebook runs on environment ${name} (kernel ${kernelName}); saving it records that environment.`
    );
    props.onSettled();
  };

  const recreate = (): Promise<void> =>
    act(async () => {
      if (plan) {
        setOperation(await api.restoreNotebookEnv(comparison.path, plan.name));
      }
    });

  const finished = (op: DockerEnv.IOperation): void => {
    if (op.state === 'succeeded' && plan) {
      void act(async () => {
        await props.refreshKernelSpecs();
        await switchTo(plan.kernel_name, op.env);
      });
    }
  };

  const differences = comparison.differences ?? [];
  const current = comparison.current;
  const match = comparison.match;
  const canKeep = comparison.state === 'different' && !!current;
  const idle = !busy && !operation && !done;

  return (
    <div
      className="jp-DockerEnv-notebookEnv"
      data-testid="notebook-env"
      data-state={comparison.state}
    >
      <p data-testid="notebook-env-message">{comparison.message}</p>
      {!operation && differences.length > 0 && (
        <details
          className="jp-DockerEnv-lockGroup"
          data-testid="notebook-env-differences"
          open
        >
          <summary>What differs ({differences.length})</summary>
          <ul className="jp-DockerEnv-differences">
            {differences.map((d, i) => (
              <li key={i}>{d.words}</li>
            ))}
          </ul>
        </details>
      )}
      {plan && !operation && <RestorePlanView plan={plan} />}
      {plan && !plan.allowed && (
        <ErrorMessage testid="notebook-env-refusal">
          It cannot be recreated here: {plan.refusal}
        </ErrorMessage>
      )}
      {operation && (
        <OperationView
          key={operation.id}
          api={api}
          operation={operation}
          onFinished={finished}
        />
      )}
      {error && (
        <ErrorMessage testid="notebook-env-error">{error}</ErrorMessage>
      )}
      {done && <Note testid="notebook-env-done">{done}</Note>}
      <div className="jp-DockerEnv-buttons">
        {plan?.allowed && !operation && (
          <Button
            kind="accept"
            testid="notebook-env-recreate"
            disabled={!idle}
            title="Create this environment from the notebook's spec and lock, then switch the notebook to it"
            onClick={() => void recreate()}
          >
            Recreate {plan.name}
          </Button>
        )}
        {match && (
          <Button
            testid="notebook-env-use-match"
            disabled={!idle}
            title="That environment has the notebook's spec and versions"
            onClick={() =>
              void act(() => switchTo(match.kernel_name, match.name))
            }
          >
            Use {match.name}
          </Button>
        )}
        {canKeep && current && (
          <Button
            testid="notebook-env-keep"
            disabled={!idle}
            title="Run the notebook on the environment here, as it is"
            onClick={() =>
              void act(() => switchTo(current.kernel_name, current.name))
            }
          >
            Use {current.name} as it is here
          </Button>
        )}
      </div>
    </div>
  );
}
