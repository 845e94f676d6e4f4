import * as React from 'react';

/** Anything that runs in the background with a log read from an offset (operations, later runs). */
export interface IFollowable {
  state: string;
  log: string[];
  log_offset: number;
}

export interface IFollowOptions<T extends IFollowable> {
  /** As last seen (its log is read again from offset 0). Key the component by its id. */
  initial: T;
  /** One GET of its state and its log lines from `offset`. */
  fetch: (offset: number) => Promise<T>;
  isActive: (item: T) => boolean;
  /** Called once when an item seen active ends. */
  onFinished?: (item: T) => void;
  /** Between polls while active. */
  intervalMs?: number;
}

export interface IFollowed<T> {
  item: T;
  /** Every log line so far, free of terminal colour codes. */
  log: string[];
  /** Why the last poll failed; polling goes on, slower. */
  error: string | null;
  /** Replaces the item, e.g. with the answer to a cancel. */
  setItem: (item: T) => void;
}

/** Terminal colour codes that build tools write into their output. */
const ESC = String.fromCharCode(27);
const ANSI_ESCAPE = new RegExp(`${ESC}\\[[0-9;]*[A-Za-z]`, 'g');

export function stripAnsi(line: string): string {
  return line.replace(ANSI_ESCAPE, '');
}

/** Polls an item while it is active and gathers its log. */
export function useFollow<T extends IFollowable>(
  options: IFollowOptions<T>
): IFollowed<T> {
  const [item, setItem] = React.useState<T>(options.initial);
  const [log, setLog] = React.useState<string[]>([]);
  const [error, setError] = React.useState<string | null>(null);
  const latest = React.useRef(options);
  latest.current = options;

  React.useEffect(() => {
    let stopped = false;
    let timer: number | undefined;
    let offset = 0;
    const interval = latest.current.intervalMs ?? 500;
    const wasActive = latest.current.isActive(latest.current.initial);
    const poll = async (): Promise<void> => {
      let next: T;
      try {
        next = await latest.current.fetch(offset);
      } catch (reason) {
        if (!stopped) {
          setError(reason instanceof Error ? reason.message : String(reason));
          timer = window.setTimeout(poll, interval * 4);
        }
        return;
      }
      if (stopped) {
        return;
      }
      setError(null);
      offset = next.log_offset;
      if (next.log.length) {
        const lines = next.log.map(stripAnsi);
        setLog(previous => previous.concat(lines));
      }
      setItem(next);
      if (latest.current.isActive(next)) {
        timer = window.setTimeout(poll, interval);
      } else if (wasActive) {
        latest.current.onFinished?.(next);
      }
    };
    void poll();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, []);

  return { item, log, error, setItem };
}
