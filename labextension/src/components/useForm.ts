import * as React from 'react';

import { DockerEnvAPIError } from '../api';
import { asAPIError, errorFor } from './Field';

type Values = { [name: string]: string | boolean };
type StringKeys<T> = {
  [K in keyof T]: T[K] extends string ? K : never;
}[keyof T] &
  string;
type BooleanKeys<T> = {
  [K in keyof T]: T[K] extends boolean ? K : never;
}[keyof T] &
  string;

export interface IForm<T extends Values> {
  values: T;
  /** The server's refusal, placed under the field it names. */
  error: DockerEnvAPIError | null;
  /** Records what a submit threw (anything: it becomes a DockerEnvAPIError); null clears it. */
  fail: (reason: unknown) => void;
  /** name, testid, value, onChange and error of a text-like Field. */
  text: (name: StringKeys<T>) => {
    name: string;
    testid: string;
    value: string;
    onChange: (value: string) => void;
    error: string | null;
  };
  /** name, testid, checked, onChange and error of a checkbox Field. */
  checkbox: (name: BooleanKeys<T>) => {
    name: string;
    testid: string;
    checked: boolean;
    onChange: (checked: boolean) => void;
    error: string | null;
  };
}

/**
 * The values of a form and the server's error about one of them. Each field's test id is
 * `${prefix}-${name}` with `_` as `-` (env-from-path, kernel-cpus).
 */
export function useForm<T extends Values>(
  prefix: string,
  initial: T
): IForm<T> {
  const [values, setValues] = React.useState<T>(initial);
  const [error, setError] = React.useState<DockerEnvAPIError | null>(null);
  const common = (name: string) => ({
    name,
    testid: `${prefix}-${name.replace(/_/g, '-')}`,
    error: errorFor(error, name)
  });
  const set = (name: string, value: string | boolean): void =>
    setValues(previous => ({ ...previous, [name]: value }));
  return {
    values,
    error,
    fail: reason => setError(reason === null ? null : asAPIError(reason)),
    text: name => ({
      ...common(name),
      value: values[name] as string,
      onChange: value => set(name, value)
    }),
    checkbox: name => ({
      ...common(name),
      checked: values[name] as boolean,
      onChange: checked => set(name, checked)
    })
  };
}
