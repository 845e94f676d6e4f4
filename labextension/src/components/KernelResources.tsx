import * as React from 'react';

import { DockerEnv } from '../api';
import { Button } from './Button';
import { asAPIError, Field } from './Field';
import { Note } from './Messages';
import { Section } from './Section';
import { useForm } from './useForm';
import { IEnvSectionProps, IPanelActions } from './types';

type Opener = IPanelActions['openNotebook'];

/** A kernel's resources; the server names one of them when it refuses a value. */
const RESOURCES = [
  { name: 'cpus', label: 'CPUs', type: 'number', placeholder: 'no limit' },
  { name: 'memory', label: 'Memory', type: 'text', placeholder: 'e.g. 2g' },
  { name: 'gpus', label: 'GPUs', type: 'text', placeholder: 'all, 1, or 0,1' }
] as const;

/** Open a notebook or console, on a kernel of its own size when the user set resources. */
export function KernelResources(props: IEnvSectionProps): JSX.Element | null {
  const { env, api, actions, run } = props;
  const form = useForm('kernel', { cpus: '', memory: '', gpus: '' });

  if (env.state !== 'built' && env.state !== 'outdated') {
    return null;
  }

  const open = (opener: Opener) =>
    run(async () => {
      const cpus = form.values.cpus.trim();
      const memory = form.values.memory.trim();
      const gpus = form.values.gpus.trim();
      const options: DockerEnv.IKernelOptions = {
        ...(cpus ? { cpus: Number(cpus) } : {}),
        ...(memory ? { memory } : {}),
        ...(gpus ? { gpus } : {})
      };
      form.fail(null);
      if (Object.keys(options).length === 0) {
        await opener(env);
        return;
      }
      let kernel: DockerEnv.IKernel;
      try {
        kernel = await api.startKernel(env.name, options);
      } catch (reason) {
        const refused = asAPIError(reason);
        if (!RESOURCES.some(r => r.name === refused.field)) {
          throw refused;
        }
        form.fail(refused);
        return;
      }
      await opener(env, kernel);
    });

  return (
    <>
      <div className="jp-DockerEnv-buttons">
        <Button
          kind="accept"
          testid="open-notebook"
          onClick={() => void open(actions.openNotebook)}
        >
          Open notebook
        </Button>
        <Button
          testid="open-console"
          onClick={() => void open(actions.openConsole)}
        >
          Open console
        </Button>
      </div>
      <Section title="Kernel resources" testid="kernel-resources">
        <div className="jp-DockerEnv-resourceFields">
          {RESOURCES.filter(r => env.gpu || r.name !== 'gpus').map(r => (
            <Field
              key={r.name}
              type={r.type}
              label={r.label}
              min={0}
              step={0.5}
              placeholder={r.placeholder}
              {...form.text(r.name)}
            />
          ))}
        </div>
        <Note>For the next notebook or console opened here.</Note>
      </Section>
    </>
  );
}
