import * as React from 'react';

/** One line of a MetaList; a line without a value is left out. */
export interface IMetaItem {
  label: string;
  value: React.ReactNode;
  testid?: string;
  /** The whole value, when the line shows it shortened. */
  title?: string;
}

/** Label: value lines (an environment's base, size, image…). */
export function MetaList(props: {
  items: IMetaItem[];
  testid?: string;
}): JSX.Element {
  return (
    <dl className="jp-DockerEnv-meta" data-testid={props.testid}>
      {props.items
        .filter(item => item.value !== null && item.value !== undefined)
        .map(item => (
          <React.Fragment key={item.label}>
            <dt>{item.label}</dt>
            <dd data-testid={item.testid} title={item.title}>
              {item.value}
            </dd>
          </React.Fragment>
        ))}
    </dl>
  );
}
