import * as React from 'react';

import { Button } from './Button';

export interface ILogViewProps {
  lines: string[];
  /** What the log is of, e.g. "build log". */
  label: string;
  /** data-testid of the log; its toggle is `${testid}-toggle`. */
  testid: string;
  /** Shown from the start (a running or failed operation). */
  initiallyShown?: boolean;
}

/** A log behind a show/hide toggle that follows new lines unless the user scrolled up. */
export function LogView(props: ILogViewProps): JSX.Element {
  const [shown, setShown] = React.useState(props.initiallyShown ?? false);
  const ref = React.useRef<HTMLPreElement>(null);
  const stickToBottom = React.useRef(true);
  React.useLayoutEffect(() => {
    const node = ref.current;
    if (node && stickToBottom.current) {
      node.scrollTop = node.scrollHeight;
    }
  }, [props.lines, shown]);

  return (
    <>
      <Button
        kind="link"
        testid={`${props.testid}-toggle`}
        ariaExpanded={shown}
        onClick={() => setShown(!shown)}
      >
        {shown ? 'Hide' : 'Show'} {props.label} ({props.lines.length} lines)
      </Button>
      {shown && (
        <pre
          ref={ref}
          className="jp-DockerEnv-log"
          data-testid={props.testid}
          onScroll={event => {
            const node = event.currentTarget;
            stickToBottom.current =
              node.scrollHeight - node.scrollTop - node.clientHeight < 24;
          }}
        >
          {props.lines.join('\n')}
        </pre>
      )}
    </>
  );
}
