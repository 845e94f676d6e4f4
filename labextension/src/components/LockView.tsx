import * as React from 'react';

import { DockerEnv } from '../api';
import { MetaList } from './MetaList';

/** The lists of a lock, in the order and words a user reads them. */
const LISTS: { key: keyof Omit<DockerEnv.ILock, 'base'>; title: string }[] = [
  { key: 'pip', title: "pip: installed into the kernel's venv" },
  { key: 'pip_system', title: 'pip, importable: added by apt or conda' },
  { key: 'pip_base', title: 'pip, importable: from the base image' },
  { key: 'conda', title: 'conda' },
  { key: 'apt', title: 'apt: the spec’s system packages' }
];

/** What is exactly inside the image: every importable distribution, apt versions, base digest. */
export function LockView(props: { lock: DockerEnv.ILock }): JSX.Element {
  const { lock } = props;
  const base = lock.base;
  return (
    <div className="jp-DockerEnv-lock" data-testid="env-lock">
      <div className="jp-DockerEnv-lockTitle">Lock (exact versions)</div>
      <MetaList
        items={[
          {
            label: 'Base',
            value: base?.image ?? '—',
            testid: 'lock-base-image'
          },
          {
            label: 'Digest',
            value: base ? base.digest || 'none (a local image)' : null,
            testid: 'lock-base-digest',
            title: base?.digest
          },
          {
            label: 'Base id',
            value: base ? base.id.slice(0, 19) : null,
            title: base?.id
          }
        ]}
      />
      {LISTS.filter(({ key }) => lock[key].length > 0).map(({ key, title }) => (
        <details
          key={key}
          className="jp-DockerEnv-lockGroup"
          data-testid={`lock-${key}`}
          open={key === 'pip'}
        >
          <summary>
            {title} ({lock[key].length})
          </summary>
          <pre className="jp-DockerEnv-lockList">{lock[key].join('\n')}</pre>
        </details>
      ))}
    </div>
  );
}
