import * as React from 'react';

import { LockView } from './LockView';
import { MetaList } from './MetaList';
import { Section } from './Section';
import { IEnvSectionProps } from './types';

function joined(list: string[] | undefined): string | null {
  return list?.length ? list.join(', ') : null;
}

/** The kernel, folder, image, spec and lock of an environment. */
export function Details(props: IEnvSectionProps): JSX.Element {
  const { env } = props;
  const image = env.image;
  return (
    <Section title="Details" testid="details">
      <MetaList
        testid="env-details"
        items={[
          {
            label: 'Kernel',
            value: env.display_name ?? env.kernel_name,
            title: env.kernel_name
          },
          { label: 'Folder', value: env.path },
          { label: 'Image', value: image?.tag, testid: 'image-tag' },
          { label: 'Id', value: image?.id.slice(0, 19), title: image?.id },
          {
            label: 'Digest',
            value: image?.digest,
            title: image?.digest ?? undefined
          },
          { label: 'Created', value: image?.created },
          { label: 'Registry', value: env.registry },
          { label: 'pip', value: joined(env.pip) },
          { label: 'apt', value: joined(env.apt) },
          { label: 'conda', value: joined(env.conda) },
          { label: 'requirements', value: env.requirements },
          { label: 'environment', value: env.environment }
        ]}
      />
      {env.lock && <LockView lock={env.lock} />}
    </Section>
  );
}
