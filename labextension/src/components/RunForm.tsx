import { PathExt } from '@jupyterlab/coreutils';
import * as React from 'react';

import { DockerEnv, DockerEnvAPIError } from '../api';
import { Button } from './Button';
import { asAPIError, errorField, Field } from './Field';
import { IEnvSectionProps } from './types';
import { useForm } from './useForm';

/** The fields the server may name when it refuses a run. */
const FIELDS = [
  'notebook',
  'parameters',
  'output',
  'command',
  'cwd',
  'cpus',
  'memory',
  'gpus',
  'timeout',
  'retries',
  'snapshot'
];

/** A `-p` value as papermill reads it: True, False, None, a number, quoted or bare text. */
export function parameterValue(text: string): unknown {
  const words: { [word: string]: unknown } = {
    True: true,
    False: false,
    None: null
  };
  if (text in words) {
    return words[text];
  }
  const quoted = /^(["'])(.*)\1$/.exec(text);
  if (quoted) {
    return quoted[2];
  }
  if (text.trim() !== '' && Number.isFinite(Number(text))) {
    return Number(text);
  }
  return text;
}

/** `name = value` lines (blank lines and # comments skipped) as notebook parameters. */
export function parseParameters(text: string): { [name: string]: unknown } {
  const parameters: { [name: string]: unknown } = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) {
      continue;
    }
    const match = /^([A-Za-z_]\w*)\s*=\s*(.*)$/.exec(line);
    if (!match) {
      throw new DockerEnvAPIError(
        `parameters: "${line}" is not name = value`,
        400,
        'parameters'
      );
    }
    parameters[match[1]] = parameterValue(match[2]);
  }
  return parameters;
}

/** A command line split into arguments as a shell would (quotes group, no expansion). */
export function splitCommand(text: string): string[] {
  const args: string[] = [];
  let current = '';
  let started = false;
  let quote: string | null = null;
  for (const char of text) {
    if (quote) {
      if (char === quote) {
        quote = null;
      } else {
        current += char;
      }
    } else if (char === '"' || char === "'") {
      quote = char;
      started = true;
    } else if (/\s/.test(char)) {
      if (started) {
        args.push(current);
        current = '';
        started = false;
      }
    } else {
      current += char;
      started = true;
    }
  }
  if (quote) {
    throw new DockerEnvAPIError(
      `command: a ${quote} quote is not closed`,
      400,
      'command'
    );
  }
  if (started) {
    args.push(current);
  }
  return args;
}

/** What the form starts with: the open notebook, or the open script in the file browser's folder. */
function initialValues(props: IEnvSectionProps) {
  const open = props.actions.currentDocument() ?? '';
  const folder = props.actions.browserFolder();
  const script = open.endsWith('.py')
    ? `python ${PathExt.relative(folder || '/', open) || open}`
    : '';
  return {
    kind: open.endsWith('.ipynb') || !script ? 'notebook' : 'command',
    notebook: open.endsWith('.ipynb') ? open : '',
    parameters: '',
    output: '',
    command: script,
    cwd: folder,
    cpus: '',
    memory: '',
    gpus: '',
    timeout: '',
    retries: '',
    snapshot: false
  };
}

export interface IRunFormProps extends IEnvSectionProps {
  onStarted: (run: DockerEnv.IRun) => void;
}

/** Start a run of a notebook (with parameters) or a command, with resources and limits. */
export function RunForm(props: IRunFormProps): JSX.Element {
  const { env, api, run, busy } = props;
  const form = useForm('run', initialValues(props));
  const v = form.values;

  const request = (): DockerEnv.IRunCreate => {
    const number = (text: string) => (text.trim() ? Number(text) : undefined);
    const text = (value: string) => value.trim() || undefined;
    const what: DockerEnv.IRunCreate =
      v.kind === 'notebook'
        ? {
            env: env.name,
            notebook: v.notebook.trim(),
            parameters: parseParameters(v.parameters),
            output: text(v.output)
          }
        : { env: env.name, command: splitCommand(v.command), cwd: v.cwd };
    return {
      ...what,
      cpus: number(v.cpus),
      memory: text(v.memory),
      gpus: text(v.gpus),
      timeout: number(v.timeout),
      retries: number(v.retries),
      snapshot: v.snapshot || undefined
    };
  };

  const start = () =>
    run(async () => {
      form.fail(null);
      try {
        props.onStarted(await api.createRun(request()));
      } catch (reason) {
        const refused = asAPIError(reason);
        if (!FIELDS.includes(errorField(refused))) {
          throw refused;
        }
        form.fail(refused);
      }
    });

  return (
    <form
      className="jp-DockerEnv-runForm"
      data-testid="run-form"
      onSubmit={event => {
        event.preventDefault();
        void start();
      }}
    >
      <Field
        type="radio"
        label="Run"
        {...form.text('kind')}
        choices={[
          {
            value: 'notebook',
            label: 'a notebook',
            testid: 'run-kind-notebook'
          },
          {
            value: 'command',
            label: 'a script or command',
            testid: 'run-kind-command'
          }
        ]}
      />
      {v.kind === 'notebook' ? (
        <>
          <Field
            type="text"
            label="Notebook"
            placeholder="path/in/the/workspace.ipynb"
            hint="Its folder is the working directory."
            {...form.text('notebook')}
          />
          <Field
            type="textarea"
            label="Parameters"
            placeholder={'alpha = 0.5\nname = "Ada"'}
            hint="name = value lines, injected after the cell tagged parameters."
            {...form.text('parameters')}
          />
          <Field
            type="text"
            label="Output"
            placeholder="runs/NAME-ID.ipynb beside the notebook"
            {...form.text('output')}
          />
        </>
      ) : (
        <>
          <Field
            type="text"
            label="Command"
            placeholder="python train.py --epochs 3"
            {...form.text('command')}
          />
          <Field
            type="text"
            label="Folder"
            placeholder="the workspace"
            hint="Where the command starts, relative to the workspace."
            {...form.text('cwd')}
          />
        </>
      )}
      <div className="jp-DockerEnv-resourceFields">
        <Field
          type="number"
          label="CPUs"
          min={0}
          step={0.5}
          placeholder="no limit"
          {...form.text('cpus')}
        />
        <Field
          type="text"
          label="Memory"
          placeholder="e.g. 2g"
          {...form.text('memory')}
        />
        {env.gpu && (
          <Field
            type="text"
            label="GPUs"
            placeholder="all, 1, or 0,1"
            {...form.text('gpus')}
          />
        )}
        <Field
          type="number"
          label="Timeout (s)"
          min={0}
          placeholder="none"
          {...form.text('timeout')}
        />
        <Field
          type="number"
          label="Retries"
          min={0}
          step={1}
          placeholder="0"
          {...form.text('retries')}
        />
      </div>
      <Field
        type="checkbox"
        label="Snapshot the code into a run image"
        hint="Reproducible: the run uses a copy of its folder's code, not the workspace."
        {...form.checkbox('snapshot')}
      />
      <div className="jp-DockerEnv-buttons">
        <Button kind="accept" submit testid="run-start" disabled={busy}>
          Start run
        </Button>
      </div>
    </form>
  );
}
