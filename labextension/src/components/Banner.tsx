import * as React from 'react';

import { Button } from './Button';

export interface IBannerProps {
  testid: string;
  /** error: something failed; warning: something is missing (the engine). */
  kind: 'error' | 'warning';
  title?: string;
  message: string;
  onRetry: () => void;
}

/** A problem of the whole panel, with a Retry button (`${testid}-retry`). */
export function Banner(props: IBannerProps): JSX.Element {
  return (
    <div
      className={`jp-DockerEnv-banner jp-DockerEnv-${props.kind}`}
      data-testid={props.testid}
      role="alert"
    >
      {props.title && <strong>{props.title}</strong>}
      <div>{props.message}</div>
      <Button testid={`${props.testid}-retry`} onClick={props.onRetry}>
        Retry
      </Button>
    </div>
  );
}
