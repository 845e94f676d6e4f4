import * as React from 'react';

import { Button } from './Button';

export interface IProgressViewProps {
  /** 0 to 1; undefined draws a bar that only says "busy". */
  progress?: number;
  /** e.g. "Build: step 3 of 9". */
  text: string;
  /** data-testid of the bar; the text is `${testid}-text`, the button `${testid}-cancel`. */
  testid: string;
  onCancel?: () => void;
  cancelling?: boolean;
}

/** A progress bar with a line of text and a Cancel button. */
export function ProgressView(props: IProgressViewProps): JSX.Element {
  const { progress } = props;
  const known = progress !== undefined;
  return (
    <div className="jp-DockerEnv-progressRow">
      <div
        className="jp-DockerEnv-progress"
        data-testid={props.testid}
        role="progressbar"
        aria-label={props.text}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={known ? Math.round(progress * 100) : undefined}
      >
        <div
          className={
            known
              ? 'jp-DockerEnv-progressBar'
              : 'jp-DockerEnv-progressBar jp-mod-indeterminate'
          }
          style={
            known
              ? { width: `${Math.max(2, Math.round(progress * 100))}%` }
              : undefined
          }
        />
      </div>
      <span
        className="jp-DockerEnv-progressText"
        data-testid={`${props.testid}-text`}
      >
        {props.text}
      </span>
      {props.onCancel && (
        <Button
          testid={`${props.testid}-cancel`}
          onClick={props.onCancel}
          disabled={props.cancelling}
        >
          Cancel
        </Button>
      )}
    </div>
  );
}
