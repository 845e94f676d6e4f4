import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from '../api';
import { BuildControls } from './BuildControls';
import { Details } from './Details';
import { EnvHeader } from './EnvHeader';
import { KernelResources } from './KernelResources';
import { ErrorMessage, Note } from './Messages';
import { OperationView } from './OperationView';
import { Runs } from './Runs';
import { Serving } from './Serving';
import { Sharing } from './Sharing';
import { IEnvSectionProps, IPanelActions } from './types';
import { useAction } from './useAction';

export interface IEnvCardProps {
  env: DockerEnv.IEnv;
  status: DockerEnv.IStatus;
  api: DockerEnvAPI;
  actions: IPanelActions;
  onChanged: (env: DockerEnv.IEnv) => void;
  onEdit: () => void;
  onDeleted: () => void;
}

/**
 * One environment: a header, then its sections. Each section is a component of its own taking
 * IEnvSectionProps; add a new one on its own line below (see index.ts).
 */
export function EnvCard(props: IEnvCardProps): JSX.Element {
  const { env, api, actions, onChanged } = props;
  const {
    busy,
    error: actionError,
    setError: setActionError,
    run
  } = useAction();
  const operationActive = DockerEnv.isActive(env.operation);

  const startOperation = (start: () => Promise<DockerEnv.IOperation>) =>
    run(async () => {
      const operation = await start();
      onChanged({
        ...env,
        operation,
        state: operation.kind === 'build' ? 'building' : env.state
      });
    });

  const operationFinished = async (
    operation: DockerEnv.IOperation
  ): Promise<void> => {
    try {
      onChanged(await api.getEnv(env.name));
    } catch (error) {
      setActionError((error as Error).message);
    }
    if (operation.state === 'succeeded' && operation.kind !== 'push') {
      await actions.refreshKernelSpecs();
    }
  };

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

  const state =
    operationActive && env.operation?.kind === 'build' ? 'building' : env.state;
  const section: IEnvSectionProps = {
    env,
    status: props.status,
    api,
    actions,
    busy,
    run,
    refreshEnv: async () => onChanged(await api.getEnv(env.name)),
    startOperation
  };

  return (
    <li
      className="jp-DockerEnv-env"
      data-testid={`env-${env.name}`}
      data-state={state}
    >
      <EnvHeader
        env={env}
        state={state}
        busy={busy}
        operationActive={operationActive}
        onEdit={props.onEdit}
        onDelete={() => void remove()}
      />
      {env.error && (
        <ErrorMessage testid="env-error">
          <strong>Invalid spec:</strong> {env.error}
        </ErrorMessage>
      )}
      {env.state === 'outdated' && !operationActive && (
        <Note>
          The spec changed since the last build: build again to use it.
        </Note>
      )}
      <KernelResources {...section} />
      <BuildControls {...section} />
      <Sharing {...section} />
      <Runs {...section} />
      <Serving {...section} />
      {actionError && (
        <ErrorMessage testid="action-error">{actionError}</ErrorMessage>
      )}
      {env.operation && (
        <OperationView
          key={env.operation.id}
          api={api}
          operation={env.operation}
          onFinished={operation => void operationFinished(operation)}
        />
      )}
      <Details {...section} />
    </li>
  );
}
