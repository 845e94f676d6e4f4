import * as React from 'react';

import { DockerEnv, DockerEnvAPIError } from './api';

export interface IEnvFormProps {
  status: DockerEnv.IStatus;
  /** The environment to edit; none to create a new one. */
  env?: DockerEnv.IEnv;
  /** Sends the form; throws a DockerEnvAPIError to show next to the form. */
  onSubmit: (spec: DockerEnv.IEnvCreate) => Promise<void>;
  onCancel: () => void;
}

type Source = 'spec' | 'file';

/** Splits a textarea into one package per line, dropping blanks and # comments. */
function lines(text: string): string[] {
  return text
    .split('\n')
    .map(line => line.replace(/#.*$/, '').trim())
    .filter(line => line.length > 0);
}

/** The form field a server error names: `pip[2]` and `pip.2` belong to `pip`. */
function fieldKey(field: string | null): string {
  return (field ?? '').split(/[.[]/)[0];
}

/** The message without a leading `field: `, for showing next to that field. */
function withoutField(error: DockerEnvAPIError): string {
  const prefix = `${error.field}: `;
  return error.field && error.message.startsWith(prefix)
    ? error.message.slice(prefix.length)
    : error.message;
}

/** Creates an environment from a spec or a workspace file, or edits an environment's spec. */
export function EnvForm(props: IEnvFormProps): JSX.Element {
  const { status, env } = props;
  const editing = env !== undefined;
  const [source, setSource] = React.useState<Source>('spec');
  const [name, setName] = React.useState(env?.name ?? '');
  const [base, setBase] = React.useState(
    env?.base ?? (status.default_base || status.allowed_bases[0] || '')
  );
  const [pip, setPip] = React.useState((env?.pip ?? []).join('\n'));
  const [apt, setApt] = React.useState((env?.apt ?? []).join('\n'));
  const [gpu, setGpu] = React.useState(env?.gpu ?? false);
  const [fromPath, setFromPath] = React.useState('');
  const [error, setError] = React.useState<DockerEnvAPIError | null>(null);
  const [busy, setBusy] = React.useState(false);

  const errorField = error ? fieldKey(error.field) : '';
  const fieldError = (key: string): JSX.Element | null =>
    error && errorField === key ? (
      <div
        className="jp-DockerEnv-fieldError"
        data-testid={`field-error-${key}`}
        role="alert"
      >
        {withoutField(error)}
      </div>
    ) : null;
  const shownFields =
    source === 'spec'
      ? ['name', 'base', 'pip', 'apt', 'gpu']
      : ['name', 'from_path', 'base'];

  const submit = async (event: React.FormEvent): Promise<void> => {
    event.preventDefault();
    let spec: DockerEnv.IEnvCreate;
    if (source === 'file') {
      spec = { name: name.trim(), from_path: fromPath.trim() };
      // A Dockerfile names its own base image.
      if (!/(^|\/)Dockerfile[^/]*$/i.test(spec.from_path ?? '')) {
        spec.base = base.trim();
      }
    } else {
      spec = {
        name: name.trim(),
        base: base.trim(),
        pip: lines(pip),
        apt: lines(apt),
        gpu
      };
      if (env) {
        // PUT replaces the whole spec: keep what this form does not show.
        if (env.conda?.length) {
          spec.conda = env.conda;
        }
        if (env.env && Object.keys(env.env).length) {
          spec.env = env.env;
        }
        if (env.requirements) {
          spec.requirements = env.requirements;
        }
        if (env.environment) {
          spec.environment = env.environment;
        }
      }
    }
    setBusy(true);
    setError(null);
    try {
      await props.onSubmit(spec);
    } catch (reason) {
      setError(
        reason instanceof DockerEnvAPIError
          ? reason
          : new DockerEnvAPIError(String(reason), 0)
      );
    } finally {
      setBusy(false);
    }
  };

  const bases = status.allowed_bases;
  const baseField =
    bases.length > 0 ? (
      <select
        id="jp-DockerEnv-base"
        className="jp-DockerEnv-input"
        data-testid="env-base"
        value={base}
        onChange={e => setBase(e.target.value)}
      >
        {(bases.includes(base) ? bases : [base, ...bases]).map(b => (
          <option key={b} value={b}>
            {b}
          </option>
        ))}
      </select>
    ) : (
      <input
        id="jp-DockerEnv-base"
        className="jp-DockerEnv-input"
        data-testid="env-base"
        type="text"
        value={base}
        placeholder={status.default_base}
        onChange={e => setBase(e.target.value)}
      />
    );

  return (
    <form
      className="jp-DockerEnv-form"
      data-testid={editing ? 'edit-form' : 'create-form'}
      onSubmit={submit}
    >
      <h3 className="jp-DockerEnv-formTitle">
        {editing ? `Edit ${env.name}` : 'New environment'}
      </h3>
      {error && !shownFields.includes(errorField) && (
        <div
          className="jp-DockerEnv-error"
          data-testid="form-error"
          role="alert"
        >
          {error.field ? `${error.field}: ` : ''}
          {withoutField(error)}
        </div>
      )}
      {!editing && (
        <fieldset className="jp-DockerEnv-source">
          <legend>Define it</legend>
          <label>
            <input
              type="radio"
              name="jp-DockerEnv-source"
              data-testid="source-spec"
              checked={source === 'spec'}
              onChange={() => setSource('spec')}
            />{' '}
            by listing packages
          </label>
          <label>
            <input
              type="radio"
              name="jp-DockerEnv-source"
              data-testid="source-file"
              checked={source === 'file'}
              onChange={() => setSource('file')}
            />{' '}
            from a file in the workspace
          </label>
        </fieldset>
      )}
      <div className="jp-DockerEnv-field">
        <label htmlFor="jp-DockerEnv-name">Name</label>
        <input
          id="jp-DockerEnv-name"
          className="jp-DockerEnv-input"
          data-testid="env-name"
          type="text"
          value={name}
          required
          disabled={editing}
          placeholder="e.g. pandas-2"
          onChange={e => setName(e.target.value)}
        />
        {fieldError('name')}
      </div>
      {source === 'file' && (
        <div className="jp-DockerEnv-field">
          <label htmlFor="jp-DockerEnv-from-path">File</label>
          <input
            id="jp-DockerEnv-from-path"
            className="jp-DockerEnv-input"
            data-testid="env-from-path"
            type="text"
            value={fromPath}
            required
            placeholder="requirements.txt, environment.yml or Dockerfile"
            onChange={e => setFromPath(e.target.value)}
          />
          <div className="jp-DockerEnv-hint">
            A path relative to the workspace root; the file is copied into the
            new environment.
          </div>
          {fieldError('from_path')}
        </div>
      )}
      <div className="jp-DockerEnv-field">
        <label htmlFor="jp-DockerEnv-base">Base image</label>
        {baseField}
        {source === 'file' && (
          <div className="jp-DockerEnv-hint">Ignored for a Dockerfile.</div>
        )}
        {fieldError('base')}
      </div>
      {source === 'spec' && (
        <>
          <div className="jp-DockerEnv-field">
            <label htmlFor="jp-DockerEnv-pip">Python packages</label>
            <textarea
              id="jp-DockerEnv-pip"
              className="jp-DockerEnv-input"
              data-testid="env-pip"
              rows={4}
              value={pip}
              placeholder={'one per line, e.g.\npandas==2.2.3'}
              onChange={e => setPip(e.target.value)}
            />
            {fieldError('pip')}
          </div>
          <div className="jp-DockerEnv-field">
            <label htmlFor="jp-DockerEnv-apt">System (apt) packages</label>
            <textarea
              id="jp-DockerEnv-apt"
              className="jp-DockerEnv-input"
              data-testid="env-apt"
              rows={2}
              value={apt}
              placeholder={'one per line, e.g.\ngraphviz'}
              onChange={e => setApt(e.target.value)}
            />
            {fieldError('apt')}
          </div>
          <div className="jp-DockerEnv-field">
            <label className="jp-DockerEnv-checkbox">
              <input
                type="checkbox"
                data-testid="env-gpu"
                checked={gpu}
                onChange={e => setGpu(e.target.checked)}
              />{' '}
              Request a GPU
            </label>
            {gpu && !status.gpu.available && (
              <div className="jp-DockerEnv-hint">
                No GPU is available on this server
                {status.gpu.reason ? `: ${status.gpu.reason}` : ''}. Kernels of
                this environment will not start here.
              </div>
            )}
            {fieldError('gpu')}
          </div>
        </>
      )}
      <div className="jp-DockerEnv-buttons">
        <button
          type="submit"
          className="jp-mod-styled jp-mod-accept"
          data-testid="env-submit"
          disabled={busy}
        >
          {editing ? 'Save' : 'Create'}
        </button>
        <button
          type="button"
          className="jp-mod-styled jp-mod-reject"
          onClick={props.onCancel}
          disabled={busy}
        >
          Cancel
        </button>
      </div>
    </form>
  );
}
