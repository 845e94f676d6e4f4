import * as React from 'react';

import { asAPIError } from './Field';

export interface IAction {
  /** True while an action runs. */
  busy: boolean;
  /** Why the last action failed, in the server's words. */
  error: string | null;
  setError: (error: string | null) => void;
  /** Runs an action: `busy` meanwhile, what it throws in `error`. */
  run: (action: () => Promise<void>) => Promise<void>;
}

/** The busy state and the error of a part's actions (a card's, a dialog's). */
export function useAction(): IAction {
  const [busy, setBusy] = React.useState(false);
  const [error, setError] = React.useState<string | null>(null);
  const run = async (action: () => Promise<void>): Promise<void> => {
    setBusy(true);
    setError(null);
    try {
      await action();
    } catch (reason) {
      setError(asAPIError(reason).message);
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, setError, run };
}
