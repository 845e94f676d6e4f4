import * as React from 'react';

import { DockerEnvAPIError } from '../api';

interface IFieldCommon {
  /** The API's name of the value (`pip`, `cpus`…): names the field error's test id. */
  name: string;
  label: React.ReactNode;
  /** The control's data-testid. */
  testid: string;
  /** A line of help under the control. */
  hint?: React.ReactNode;
  /** The server's message about this value, shown under it. */
  error?: string | null;
  disabled?: boolean;
  /** Sits on one line with its neighbours (checkboxes next to a button). */
  inline?: boolean;
  title?: string;
}

interface ITextField extends IFieldCommon {
  type: 'text' | 'number';
  value: string;
  onChange: (value: string) => void;
  placeholder?: string;
  required?: boolean;
  min?: number;
  step?: number;
}

interface ITextareaField extends IFieldCommon {
  type: 'textarea';
  value: string;
  onChange: (value: string) => void;
  placeholder?: string;
  rows?: number;
}

interface ISelectField extends IFieldCommon {
  type: 'select';
  value: string;
  onChange: (value: string) => void;
  options: string[];
}

interface ICheckboxField extends IFieldCommon {
  type: 'checkbox';
  checked: boolean;
  onChange: (checked: boolean) => void;
}

/** One choice of a radio field. */
export interface IChoice {
  value: string;
  label: React.ReactNode;
  testid: string;
}

interface IRadioField extends IFieldCommon {
  type: 'radio';
  value: string;
  onChange: (value: string) => void;
  choices: IChoice[];
}

export type FieldProps =
  ITextField | ITextareaField | ISelectField | ICheckboxField | IRadioField;

/**
 * A labelled input: label, control, hint and the server's error about it. Every input of the
 * panel is one of these, so that all of them look, label and report errors alike.
 */
export function Field(props: FieldProps): JSX.Element {
  const id = React.useId();
  const classes = ['jp-DockerEnv-field'];
  if (props.inline) {
    classes.push('jp-mod-inline');
  }
  const after = (
    <>
      {props.hint && <div className="jp-DockerEnv-hint">{props.hint}</div>}
      {props.error && (
        <div
          className="jp-DockerEnv-fieldError"
          data-testid={`field-error-${props.name}`}
          role="alert"
        >
          {props.error}
        </div>
      )}
    </>
  );
  if (props.type === 'checkbox') {
    return (
      <div className={classes.join(' ')} title={props.title}>
        <label className="jp-DockerEnv-checkbox">
          <input
            type="checkbox"
            data-testid={props.testid}
            checked={props.checked}
            disabled={props.disabled}
            onChange={e => props.onChange(e.target.checked)}
          />{' '}
          {props.label}
        </label>
        {after}
      </div>
    );
  }
  if (props.type === 'radio') {
    return (
      <fieldset className="jp-DockerEnv-choices" title={props.title}>
        <legend>{props.label}</legend>
        {props.choices.map(choice => (
          <label key={choice.value} className="jp-DockerEnv-checkbox">
            <input
              type="radio"
              name={id}
              data-testid={choice.testid}
              checked={props.value === choice.value}
              disabled={props.disabled}
              onChange={() => props.onChange(choice.value)}
            />{' '}
            {choice.label}
          </label>
        ))}
        {after}
      </fieldset>
    );
  }
  return (
    <div className={classes.join(' ')} title={props.title}>
      <label htmlFor={id}>{props.label}</label>
      <Control {...props} id={id} />
      {after}
    </div>
  );
}

/** The control of a text, number, textarea or select field. */
function Control(
  props: (ITextField | ITextareaField | ISelectField) & { id: string }
): JSX.Element {
  const common = {
    id: props.id,
    className: 'jp-DockerEnv-input',
    'data-testid': props.testid,
    value: props.value,
    disabled: props.disabled,
    'aria-invalid': props.error ? true : undefined
  };
  switch (props.type) {
    case 'select':
      return (
        <select {...common} onChange={e => props.onChange(e.target.value)}>
          {(props.options.includes(props.value)
            ? props.options
            : [props.value, ...props.options]
          ).map(option => (
            <option key={option} value={option}>
              {option}
            </option>
          ))}
        </select>
      );
    case 'textarea':
      return (
        <textarea
          {...common}
          rows={props.rows ?? 3}
          placeholder={props.placeholder}
          onChange={e => props.onChange(e.target.value)}
        />
      );
    default:
      return (
        <input
          {...common}
          type={props.type}
          min={props.type === 'number' ? props.min : undefined}
          step={props.type === 'number' ? props.step : undefined}
          required={props.required}
          placeholder={props.placeholder}
          onChange={e => props.onChange(e.target.value)}
        />
      );
  }
}

/** The form field a server error names: `pip[2]` and `pip.2` belong to `pip`. */
export function errorField(error: DockerEnvAPIError | null): string {
  return (error?.field ?? '').split(/[.[]/)[0];
}

/** The server's message about `field`, without its leading `field: `; null when about another. */
export function errorFor(
  error: DockerEnvAPIError | null,
  field: string
): string | null {
  if (!error || errorField(error) !== field) {
    return null;
  }
  const prefix = `${error.field}: `;
  return error.message.startsWith(prefix)
    ? error.message.slice(prefix.length)
    : error.message;
}

/** Any thrown value as an API error, so that forms can place it next to its field. */
export function asAPIError(reason: unknown): DockerEnvAPIError {
  return reason instanceof DockerEnvAPIError
    ? reason
    : new DockerEnvAPIError(
        reason instanceof Error ? reason.message : String(reason),
        0
      );
}
