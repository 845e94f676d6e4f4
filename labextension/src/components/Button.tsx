import { LabIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

export interface IButtonProps {
  testid?: string;
  /** Not needed by a form's submit button. */
  onClick?: () => void;
  /** Submits its form instead of acting by itself. */
  submit?: boolean;
  /** accept: the main action; reject: a form's Cancel; plain: the others; link: reads as text. */
  kind?: 'accept' | 'reject' | 'plain' | 'link';
  /** Draws only this icon; `title` then names the action for screen readers too. */
  icon?: LabIcon;
  title?: string;
  disabled?: boolean;
  children?: React.ReactNode;
  ariaExpanded?: boolean;
}

const CLASSES = {
  accept: 'jp-mod-styled jp-mod-accept',
  reject: 'jp-mod-styled jp-mod-reject',
  plain: 'jp-DockerEnv-button',
  link: 'jp-DockerEnv-linkButton'
};

/** Every button of the panel: the same look per kind, and never a form submit by accident. */
export function Button(props: IButtonProps): JSX.Element {
  const Icon = props.icon;
  return (
    <button
      type={props.submit ? 'submit' : 'button'}
      className={
        Icon ? 'jp-DockerEnv-iconButton' : CLASSES[props.kind ?? 'plain']
      }
      data-testid={props.testid}
      title={props.title}
      aria-label={Icon ? props.title : undefined}
      aria-expanded={props.ariaExpanded}
      disabled={props.disabled}
      onClick={props.onClick}
    >
      {Icon ? <Icon.react tag="span" /> : props.children}
    </button>
  );
}
