import * as React from 'react';

/** Something that failed, said in the card or form where it happened. */
export function ErrorMessage(props: {
  testid?: string;
  children: React.ReactNode;
}): JSX.Element {
  return (
    <div className="jp-DockerEnv-error" data-testid={props.testid} role="alert">
      {props.children}
    </div>
  );
}

/** A quiet line of information. */
export function Note(props: {
  testid?: string;
  children: React.ReactNode;
}): JSX.Element {
  return (
    <div className="jp-DockerEnv-note" data-testid={props.testid}>
      {props.children}
    </div>
  );
}
