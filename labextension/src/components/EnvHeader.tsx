import { deleteIcon, editIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { DockerEnv } from '../api';
import { Button } from './Button';
import { MetaList } from './MetaList';

const STATE_LABELS: { [state in DockerEnv.EnvState]: string } = {
  not_built: 'not built',
  building: 'building',
  built: 'built',
  failed: 'failed',
  outdated: 'outdated'
};

export function formatSize(bytes: number | undefined): string {
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

export interface IEnvHeaderProps {
  env: DockerEnv.IEnv;
  /** The state to show: `building` while a build runs, whatever the last refresh said. */
  state: DockerEnv.EnvState;
  /** An action of the card runs. */
  busy: boolean;
  /** A build, push or pull runs: the environment cannot be deleted meanwhile. */
  operationActive: boolean;
  onEdit: () => void;
  onDelete: () => void;
}

/** An environment's name, state, edit and delete buttons, and what it is at a glance. */
export function EnvHeader(props: IEnvHeaderProps): JSX.Element {
  const { env, state } = props;
  return (
    <>
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
          <Button
            icon={editIcon}
            testid="edit"
            title={`Edit the spec of ${env.name}`}
            disabled={props.busy}
            onClick={props.onEdit}
          />
        )}
        {!env.readonly && (
          <Button
            icon={deleteIcon}
            testid="delete"
            title={`Delete ${env.name} and its images`}
            disabled={props.busy || props.operationActive}
            onClick={props.onDelete}
          />
        )}
      </div>
      <MetaList
        items={[
          { label: 'Base', value: env.base ?? '—', testid: 'env-base-image' },
          {
            label: 'Size',
            value: formatSize(env.image?.size),
            testid: 'env-size'
          },
          {
            label: 'GPU',
            value: env.gpu ? 'yes' : 'no',
            testid: 'env-gpu-flag'
          },
          { label: 'From', value: env.kind !== 'spec' ? env.kind : null }
        ]}
      />
    </>
  );
}
