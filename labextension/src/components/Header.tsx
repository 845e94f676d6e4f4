import { refreshIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { Button } from './Button';

/** The panel's title and its refresh button. */
export function Header(props: {
  loading: boolean;
  onRefresh: () => void;
}): JSX.Element {
  return (
    <header className="jp-DockerEnv-header">
      <h2 className="jp-DockerEnv-title">Docker environments</h2>
      <Button
        icon={refreshIcon}
        title="Refresh"
        testid="refresh"
        disabled={props.loading}
        onClick={props.onRefresh}
      />
    </header>
  );
}
