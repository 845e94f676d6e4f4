import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { DockerEnv } from '../api';
import { Button } from './Button';
import { formatSize } from './EnvHeader';
import { asAPIError, Field } from './Field';
import { ErrorMessage, Note } from './Messages';
import { MetaList } from './MetaList';
import { OperationView } from './OperationView';
import { Section } from './Section';
import { IEnvSectionProps } from './types';
import { useForm } from './useForm';

/** The request's values the server may name when it refuses one. */
const FIELDS = ['model', 'handler'];

/** "460 MB · the environment's 558 MB (−18%)" */
function sizes(image: DockerEnv.IServingImage): string {
  const own = formatSize(image.size);
  const envSize = image.env_image.size;
  if (envSize === null || envSize === 0) {
    return `${own} · the environment's image is gone`;
  }
  const saved = Math.round((1 - image.size / envSize) * 100);
  return `${own} · the environment's ${formatSize(envSize)} (${saved >= 0 ? '−' : '+'}${Math.abs(saved)}%)`;
}

/** One serving image: what it holds, how to run it, push and delete. */
function ServingImage(props: {
  image: DockerEnv.IServingImage;
  registry: string | null;
  disabled: boolean;
  onPush: () => void;
  onDelete: () => void;
}): JSX.Element {
  const { image } = props;
  return (
    <li className="jp-DockerEnv-servingImage" data-testid="serving-image">
      <MetaList
        items={[
          { label: 'Image', value: image.image, testid: 'serving-image-tag' },
          { label: 'Size', value: sizes(image), testid: 'serving-image-size' },
          {
            label: 'Model',
            value: `${image.model.path} (${formatSize(image.model.size)})`,
            title: image.model.digest
          },
          { label: 'Handler', value: image.handler },
          {
            label: 'Left out',
            value: `${image.removed.length} kernel-only packages`,
            title: image.removed.join('\n')
          },
          { label: 'Created', value: image.created },
          {
            label: 'Run',
            value: <code>jupyter docker-env serve {image.image}</code>
          }
        ]}
      />
      <div className="jp-DockerEnv-buttons">
        {props.registry && (
          <Button
            testid="serving-push"
            disabled={props.disabled}
            title={`Push to ${props.registry}`}
            onClick={props.onPush}
          >
            Push
          </Button>
        )}
        <Button
          testid="serving-delete"
          disabled={props.disabled}
          title="Remove this serving image"
          onClick={props.onDelete}
        >
          Delete
        </Button>
      </div>
    </li>
  );
}

/**
 * Serving images of a built environment: one is built from a model file or folder in the
 * workspace (a training run's output) and a handler, followed like a build, and listed with its
 * size next to the environment's image size. The list is fetched when the section opens.
 */
export function Serving(props: IEnvSectionProps): JSX.Element | null {
  const { env, status, api, busy, run } = props;
  const form = useForm('serving', { model: '', handler: 'serve.py:predict' });
  const [images, setImages] = React.useState<DockerEnv.IServingImage[] | null>(
    null
  );
  const [operation, setOperation] = React.useState<DockerEnv.IOperation | null>(
    null
  );
  const [error, setError] = React.useState<string | null>(null);

  const load = React.useCallback(async (): Promise<void> => {
    try {
      setImages(await api.listServing(env.name));
      setError(null);
    } catch (reason) {
      setError((reason as Error).message);
    }
  }, [api, env.name]);

  if (env.state !== 'built') {
    return null;
  }
  const engineUp = status.engine.available;
  const operationActive = DockerEnv.isActive(operation);

  const build = () =>
    run(async () => {
      form.fail(null);
      try {
        setOperation(
          await api.startServingBuild(env.name, {
            model: form.values.model.trim(),
            handler: form.values.handler.trim()
          })
        );
      } catch (reason) {
        const refused = asAPIError(reason);
        if (!FIELDS.includes(refused.field ?? '')) {
          throw refused;
        }
        form.fail(refused);
      }
    });

  const push = (image: DockerEnv.IServingImage) =>
    run(async () => setOperation(await api.pushServing(image.id)));

  const remove = async (image: DockerEnv.IServingImage): Promise<void> => {
    const answer = await showDialog({
      title: `Delete serving image ${image.image}?`,
      body: 'Its model stays in the workspace; build the image again to serve it.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (answer.button.accept) {
      await run(async () => {
        await api.deleteServing(image.id);
        await load();
      });
    }
  };

  const count = images?.length;
  return (
    <Section
      title={
        count === undefined
          ? 'Serving'
          : `Serving · ${count} image${count === 1 ? '' : 's'}`
      }
      testid="serving"
      onOpen={() => void load()}
    >
      <form
        className="jp-DockerEnv-servingForm"
        onSubmit={event => {
          event.preventDefault();
          void build();
        }}
      >
        <Field
          type="text"
          label="Model"
          placeholder="models/model.joblib"
          hint="A model file or folder in the workspace, e.g. a training run's output."
          {...form.text('model')}
        />
        <Field
          type="text"
          label="Handler"
          placeholder="serve.py:predict"
          hint="FILE.py:FUNCTION in the workspace: FUNCTION(payload) answers POST /predict; load(path), when defined, loads the model once per worker."
          {...form.text('handler')}
        />
        <div className="jp-DockerEnv-buttons">
          <Button
            submit
            kind="accept"
            testid="serving-build"
            disabled={
              busy ||
              operationActive ||
              !engineUp ||
              !form.values.model.trim() ||
              !form.values.handler.trim()
            }
            title="The environment's runtime without the kernel, the handler and the model, behind gunicorn"
          >
            Build serving image
          </Button>
        </div>
      </form>
      {operation && (
        <OperationView
          key={operation.id}
          api={api}
          operation={operation}
          onFinished={finished => {
            setOperation(finished);
            void load();
          }}
        />
      )}
      {error && <ErrorMessage>{error}</ErrorMessage>}
      {count === 0 && <Note>No serving image of {env.name} yet.</Note>}
      {!!count && (
        <ul className="jp-DockerEnv-servingImages">
          {images?.map(image => (
            <ServingImage
              key={image.id}
              image={image}
              registry={status.registry}
              disabled={busy || operationActive || !engineUp}
              onPush={() => void push(image)}
              onDelete={() => void remove(image)}
            />
          ))}
        </ul>
      )}
    </Section>
  );
}
