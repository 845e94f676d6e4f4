import * as React from 'react';

import { DockerEnv } from '../api';
import { Button } from './Button';
import { ErrorMessage } from './Messages';
import { MetaList } from './MetaList';
import { Section } from './Section';
import { IEnvSectionProps } from './types';

/** What the registry said, in words. */
function describe(
  answer: DockerEnv.IRegistryState | null,
  asking: boolean
): string {
  if (asking) {
    return 'asking the registry…';
  }
  if (answer === null) {
    return 'not asked yet';
  }
  if (answer.available === null) {
    return `the registry could not be asked${answer.reason ? `: ${answer.reason}` : ''}`;
  }
  return answer.available ? 'in the registry' : 'not in the registry';
}

/**
 * Push and pull through the configured registry. Whether the registry has the image costs a
 * round-trip, so it is asked only when the section opens, on Check, and after a push or pull.
 */
export function Sharing(props: IEnvSectionProps): JSX.Element | null {
  const { env, status, api, busy } = props;
  const [answer, setAnswer] = React.useState<DockerEnv.IRegistryState | null>(
    null
  );
  const [asking, setAsking] = React.useState(false);
  const [error, setError] = React.useState<string | null>(null);
  const asked = React.useRef(0);

  const check = React.useCallback(async (): Promise<void> => {
    const question = ++asked.current;
    setAsking(true);
    setError(null);
    try {
      const reply = await api.registryState(env.name);
      if (question === asked.current) {
        setAnswer(reply);
      }
    } catch (reason) {
      if (question === asked.current) {
        setAnswer(null);
        setError((reason as Error).message);
      }
    } finally {
      if (question === asked.current) {
        setAsking(false);
      }
    }
  }, [api, env.name]);

  // An answer is about one spec's image: a new spec makes it stale.
  React.useEffect(() => setAnswer(null), [env.spec_hash]);

  // Ask again when a push or pull ends, and refresh a shown answer after a build.
  const operation = env.operation;
  const wasActive = React.useRef(DockerEnv.isActive(operation));
  React.useEffect(() => {
    const active = DockerEnv.isActive(operation);
    if (wasActive.current && !active && operation) {
      if (operation.kind !== 'build' || answer !== null) {
        void check();
      }
    }
    wasActive.current = active;
  }, [operation?.id, operation?.state]);

  if (!status.registry) {
    return null;
  }
  const engineUp = status.engine.available;
  const operationActive = DockerEnv.isActive(operation);
  const said = describe(answer, asking);

  return (
    <Section
      title={answer || asking ? `Sharing · ${said}` : 'Sharing'}
      testid="sharing"
      onOpen={() => void check()}
    >
      <MetaList
        items={[
          {
            label: 'Image',
            value: env.registry ?? '—',
            testid: 'registry-image'
          },
          { label: 'State', value: said, testid: 'registry-state' }
        ]}
      />
      {error && <ErrorMessage>{error}</ErrorMessage>}
      <div className="jp-DockerEnv-buttons">
        <Button
          testid="push"
          disabled={busy || operationActive || !env.image || !engineUp}
          title={
            env.image
              ? `Push the image to ${status.registry}`
              : 'Build the environment first'
          }
          onClick={() => void props.startOperation(() => api.push(env.name))}
        >
          Push
        </Button>
        <Button
          testid="pull"
          disabled={busy || operationActive || !engineUp}
          title={`Pull the image from ${status.registry}`}
          onClick={() => void props.startOperation(() => api.pull(env.name))}
        >
          Pull
        </Button>
        <Button
          testid="registry-check"
          disabled={asking}
          title="Ask the registry whether it has the current image"
          onClick={() => void check()}
        >
          Check
        </Button>
      </div>
    </Section>
  );
}
