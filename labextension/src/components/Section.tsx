import * as React from 'react';

export interface ISectionProps {
  /** What the closed section shows. */
  title: React.ReactNode;
  testid: string;
  /** Called each time the user opens it: the moment to fetch what it shows. */
  onOpen?: () => void;
  children: React.ReactNode;
}

/**
 * A part of an environment card that opens on demand. Its content is rendered only while it is
 * open, so a section may fetch what it shows in `onOpen` instead of on every refresh.
 */
export function Section(props: ISectionProps): JSX.Element {
  const [open, setOpen] = React.useState(false);
  const onOpen = React.useRef(props.onOpen);
  onOpen.current = props.onOpen;
  return (
    <details
      className="jp-DockerEnv-section"
      data-testid={props.testid}
      onToggle={event => {
        const nowOpen = event.currentTarget.open;
        setOpen(nowOpen);
        if (nowOpen) {
          onOpen.current?.();
        }
      }}
    >
      <summary>{props.title}</summary>
      {open && <div className="jp-DockerEnv-sectionBody">{props.children}</div>}
    </details>
  );
}
