import * as React from 'react';

import { DockerEnv } from '../api';
import { Button } from './Button';
import { errorField, Field } from './Field';
import { ErrorMessage } from './Messages';
import { useForm } from './useForm';

export interface IEnvFormProps {
  status: DockerEnv.IStatus;
  /** The environment to edit; none to create a new one. */
  env?: DockerEnv.IEnv;
  /** Sends the form; throws a DockerEnvAPIError to show next to its field. */
  onSubmit: (spec: DockerEnv.IEnvCreate) => Promise<void>;
  onCancel: () => void;
}

/** Splits a textarea into one package per line, dropping blanks and # comments. */
function lines(text: string): string[] {
  return text
    .split('\n')
    .map(line => line.replace(/#.*$/, '').trim())
    .filter(line => line.length > 0);
}

/** The package lists of a spec, one package per line. */
const PACKAGE_LISTS = [
  { name: 'pip', label: 'Python packages', rows: 4, example: 'pandas==2.2.3' },
  { name: 'apt', label: 'System (apt) packages', rows: 2, example: 'graphviz' }
] as const;

/** A Dockerfile names its own base image. */
function isDockerfile(path: string): boolean {
  return /(^|\/)Dockerfile[^/]*$/i.test(path);
}

/** Creates an environment from a spec or a workspace file, or edits an environment's spec. */
export function EnvForm(props: IEnvFormProps): JSX.Element {
  const { status, env } = props;
  const editing = env !== undefined;
  const form = useForm('env', {
    source: 'spec',
    name: env?.name ?? '',
    from_path: '',
    base: env?.base ?? (status.default_base || status.allowed_bases[0] || ''),
    pip: (env?.pip ?? []).join('\n'),
    apt: (env?.apt ?? []).join('\n'),
    gpu: env?.gpu ?? false
  });
  const { values } = form;
  const [busy, setBusy] = React.useState(false);
  const fromFile = values.source === 'file';
  const dockerfile = fromFile && isDockerfile(values.from_path.trim());

  const spec = (): DockerEnv.IEnvCreate => {
    const name = values.name.trim();
    const base = values.base.trim();
    if (fromFile) {
      const path = values.from_path.trim();
      return dockerfile
        ? { name, from_path: path }
        : { name, from_path: path, base };
    }
    const fields: DockerEnv.IEnvCreate = {
      name,
      base,
      pip: lines(values.pip),
      apt: lines(values.apt),
      gpu: values.gpu
    };
    // PUT replaces the whole spec: keep what this form does not show.
    if (env?.conda?.length) {
      fields.conda = env.conda;
    }
    if (env?.env && Object.keys(env.env).length) {
      fields.env = env.env;
    }
    if (env?.requirements) {
      fields.requirements = env.requirements;
    }
    if (env?.environment) {
      fields.environment = env.environment;
    }
    return fields;
  };

  const submit = async (event: React.FormEvent): Promise<void> => {
    event.preventDefault();
    setBusy(true);
    form.fail(null);
    try {
      await props.onSubmit(spec());
    } catch (reason) {
      form.fail(reason);
    } finally {
      setBusy(false);
    }
  };

  const shownFields = fromFile
    ? ['name', 'from_path', 'base']
    : ['name', 'base', 'pip', 'apt', 'gpu'];
  const error = form.error;
  const unplaced = error && !shownFields.includes(errorField(error));

  return (
    <form
      className="jp-DockerEnv-form"
      data-testid={editing ? 'edit-form' : 'create-form'}
      onSubmit={event => void submit(event)}
    >
      <h3 className="jp-DockerEnv-formTitle">
        {editing ? `Edit ${env.name}` : 'New environment'}
      </h3>
      {unplaced && (
        <ErrorMessage testid="form-error">{error.message}</ErrorMessage>
      )}
      {!editing && (
        <Field
          type="radio"
          label="Define it"
          {...form.text('source')}
          choices={[
            {
              value: 'spec',
              label: 'by listing packages',
              testid: 'source-spec'
            },
            {
              value: 'file',
              label: 'from a file in the workspace',
              testid: 'source-file'
            }
          ]}
        />
      )}
      <Field
        type="text"
        label="Name"
        required
        disabled={editing}
        placeholder="e.g. pandas-2"
        {...form.text('name')}
      />
      {fromFile && (
        <Field
          type="text"
          label="File"
          required
          placeholder="requirements.txt, environment.yml or Dockerfile"
          hint="A path relative to the workspace root; the file is copied into the new environment."
          {...form.text('from_path')}
        />
      )}
      {!dockerfile &&
        (status.allowed_bases.length > 0 ? (
          <Field
            type="select"
            label="Base image"
            options={status.allowed_bases}
            {...form.text('base')}
          />
        ) : (
          <Field
            type="text"
            label="Base image"
            placeholder={status.default_base}
            {...form.text('base')}
          />
        ))}
      {!fromFile && (
        <>
          {PACKAGE_LISTS.map(list => (
            <Field
              key={list.name}
              type="textarea"
              label={list.label}
              rows={list.rows}
              placeholder={`one per line, e.g.\n${list.example}`}
              {...form.text(list.name)}
            />
          ))}
          <Field
            type="checkbox"
            label="Request a GPU"
            hint={
              values.gpu &&
              !status.gpu.available &&
              `No GPU is available on this server${status.gpu.reason ? `: ${status.gpu.reason}` : ''}. Kernels of this environment will not start here.`
            }
            {...form.checkbox('gpu')}
          />
        </>
      )}
      <div className="jp-DockerEnv-buttons">
        <Button kind="accept" submit testid="env-submit" disabled={busy}>
          {editing ? 'Save' : 'Create'}
        </Button>
        <Button
          kind="reject"
          testid="env-cancel"
          onClick={props.onCancel}
          disabled={busy}
        >
          Cancel
        </Button>
      </div>
    </form>
  );
}
