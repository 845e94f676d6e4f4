import * as React from 'react';

import { DockerEnv } from '../api';
import { Button } from './Button';
import { Field } from './Field';
import { IEnvSectionProps } from './types';

/** Build or rebuild, without cache or from the lock. */
export function BuildControls(props: IEnvSectionProps): JSX.Element {
  const { env, status, api, busy } = props;
  const [noCache, setNoCache] = React.useState(false);
  const [fromLock, setFromLock] = React.useState(false);
  const engineUp = status.engine.available;

  const build = () =>
    props.startOperation(() =>
      api.startBuild(env.name, {
        ...(noCache ? { no_cache: true } : {}),
        ...(fromLock && env.lock ? { from_lock: true } : {})
      })
    );

  return (
    <div className="jp-DockerEnv-buttons">
      <Button
        testid="build"
        disabled={
          busy || DockerEnv.isActive(env.operation) || !engineUp || !!env.error
        }
        title={
          !engineUp
            ? 'The Docker engine is not available'
            : env.error
              ? 'Fix the spec first'
              : 'Build the image of this environment'
        }
        onClick={() => void build()}
      >
        {env.image ? 'Rebuild' : 'Build'}
      </Button>
      <Field
        type="checkbox"
        inline
        name="no_cache"
        label="without cache"
        testid="no-cache"
        title="Rebuild every layer: refreshes packages without a pinned version"
        checked={noCache}
        onChange={setNoCache}
      />
      {env.lock && (
        <Field
          type="checkbox"
          inline
          name="from_lock"
          label="from lock"
          testid="from-lock"
          title="Install the exact versions of the lock, on the base image's locked digest"
          checked={fromLock}
          onChange={setFromLock}
        />
      )}
    </div>
  );
}
