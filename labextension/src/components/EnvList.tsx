import * as React from 'react';

import { DockerEnv, DockerEnvAPI } from '../api';
import { EnvCard } from './EnvCard';
import { IPanelActions } from './types';

export interface IEnvListProps {
  envs: DockerEnv.IEnv[];
  status: DockerEnv.IStatus;
  api: DockerEnvAPI;
  actions: IPanelActions;
  onChanged: (env: DockerEnv.IEnv) => void;
  onEdit: (env: DockerEnv.IEnv) => void;
  onDeleted: (env: DockerEnv.IEnv) => void;
}

/** Every environment, one card each. */
export function EnvList(props: IEnvListProps): JSX.Element {
  return (
    <ul className="jp-DockerEnv-list" data-testid="env-list">
      {props.envs.map(env => (
        <EnvCard
          key={env.name}
          env={env}
          status={props.status}
          api={props.api}
          actions={props.actions}
          onChanged={props.onChanged}
          onEdit={() => props.onEdit(env)}
          onDeleted={() => props.onDeleted(env)}
        />
      ))}
    </ul>
  );
}
