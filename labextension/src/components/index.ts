/*
 * The panel's components, one per file. How they fit:
 *
 *   PanelView            refresh loop, banners, the form, the list, the footer
 *     Header, Banner, StatusFooter, EnvForm
 *     EnvList → EnvCard  one environment: EnvHeader, then its sections
 *       KernelResources  open a notebook/console, per-kernel cpus/memory/gpus
 *       BuildControls    build, without cache, from lock
 *       Sharing          push/pull; asks the registry only when opened or on Check
 *       Runs             training runs: RunForm (notebook or command, parameters, resources),
 *                        the live list of RunItem (state, duration, log, open, cancel, re-run)
 *       Serving          serving images from a model and a handler; sizes; push, delete
 *       OperationView    the running or last build/push/pull: progress, log, failure
 *       Details          kernel, folder, image, spec, LockView
 *
 * Building blocks, for every new part:
 *   Field        the ONE labelled input (text, number, textarea, select, checkbox, radio) with
 *                hint and field error. Every input of the panel is a Field.
 *   useAction    busy state and error of a part's actions (`run(action)`), as cards use them.
 *   useForm      a form's values and the server's error: `<Field type="text" label="Memory"
 *                {...form.text('memory')} />` binds value, onChange, test id and the error the
 *                server names for `memory`; `form.fail(error)` after a refused submit.
 *   Button       every button (accept, reject, plain, link, icon).
 *   Section      a collapsible part of a card; renders its body only while open, and calls
 *                `onOpen` so that it can fetch on demand instead of on every refresh.
 *   MetaList     label: value lines.
 *   ErrorMessage, Note   a failure or a quiet line, where it happened.
 *   useFollow    polls anything with `{state, log, log_offset}` while it is active and gathers
 *                its ANSI-free log; with ProgressView and LogView it makes a viewer like
 *                OperationView for any background work (training runs, serving).
 *
 * A new section of an environment card (Runs, Serving, notebook pinning):
 *   1. write components/Runs.tsx exporting `function Runs(props: IEnvSectionProps)`; wrap it in
 *      <Section title="Runs" testid="runs" onOpen={load}>, use Field for inputs and Button for
 *      buttons, `props.run(...)` for actions (busy state, errors shown in the card);
 *   2. add one method per new endpoint to DockerEnvAPI in api.ts and its types to the
 *      DockerEnv namespace, mirroring openapi.yaml;
 *   3. add `<Runs {...section} />` on its own line in EnvCard, and export it here.
 * A panel-wide part (not per environment) goes into PanelView the same way.
 *
 * Outside the panel: NotebookEnvView is the body of a notebook's "Environment missing/differs"
 * dialog (notebookenv.tsx adds that toolbar item to notebooks that record an environment).
 */
export { Banner } from './Banner';
export { BuildControls } from './BuildControls';
export { Button } from './Button';
export { Details } from './Details';
export { EnvCard } from './EnvCard';
export { EnvForm } from './EnvForm';
export { EnvHeader } from './EnvHeader';
export { EnvList } from './EnvList';
export { asAPIError, errorFor, Field } from './Field';
export { Header } from './Header';
export { KernelResources } from './KernelResources';
export { LockView } from './LockView';
export { LogView } from './LogView';
export { ErrorMessage, Note } from './Messages';
export { MetaList } from './MetaList';
export { NotebookEnvView } from './NotebookEnvView';
export { OperationView } from './OperationView';
export { PanelView } from './PanelView';
export { ProgressView } from './ProgressView';
export { RunForm } from './RunForm';
export { RunItem } from './RunItem';
export { Runs } from './Runs';
export { Section } from './Section';
export { Serving } from './Serving';
export { Sharing } from './Sharing';
export { StatusFooter } from './StatusFooter';
export type { IEnvSectionProps, IPanelActions } from './types';
export { useAction } from './useAction';
export { useFollow } from './useFollow';
export { useForm } from './useForm';
