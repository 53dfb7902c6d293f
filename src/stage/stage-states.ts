// A stage's life as data: its states (exported as ffx_stage_state{state}), every transition it
// may make and what makes it, and the messages each state acts on. stage.ts refuses anything
// else (a transition not listed here is a bug, and throws), its header draws the diagram that
// renderDiagram() makes from these tables, and test/unit/stage-states.test.ts holds the two together.
import { STAGE_STATES, type StageState } from '../metrics/index.js';

export { STAGE_STATES, type StageState };

/** Everything a stage receives: control messages from its coordinator, data from upstream. */
export const STAGE_INPUTS = [
  'config',
  'abort',
  'stop',
  'error',
  'heartbeat',
  'train',
  'eval',
  'marker',
] as const;
export type StageInput = (typeof STAGE_INPUTS)[number];

/** The transitions, each with what makes it happen. */
export const STAGE_TRANSITIONS: readonly { from: StageState; to: StageState; on: string }[] = [
  { from: 'waiting', to: 'configured', on: 'config' },
  { from: 'between-runs', to: 'configured', on: 'config' },
  { from: 'configured', to: 'training', on: 'train' },
  { from: 'configured', to: 'evaluating', on: 'eval' },
  { from: 'training', to: 'evaluating', on: 'eval' },
  { from: 'evaluating', to: 'training', on: 'train' },
  ...(['configured', 'training', 'evaluating'] as const).map((from) => ({
    from,
    to: 'between-runs' as const,
    on: 'end marker, abort, coordinator lost or replaced',
  })),
  ...(['waiting', 'configured', 'training', 'evaluating', 'between-runs'] as const).map((from) => ({
    from,
    to: 'closing' as const,
    on: 'stop marker, stop, SIGTERM/SIGINT, fatal',
  })),
];

/** Serving a run: the states that hold one. */
const SERVING = ['abort', 'stop', 'error', 'heartbeat', 'train', 'eval', 'marker'] as const;
/** Without a run: saying hello, waiting for a config. */
const WAITING = ['config', 'stop', 'error', 'heartbeat'] as const;

/**
 * What each state acts on. Anything else is not for it: a config while serving is a late answer
 * to an old hello (ignored), data while not serving is another run's (a leftover or a stranger's),
 * an abort without a run is ignored, and a closing stage takes nothing.
 */
export const STAGE_ACCEPTS: Readonly<Record<StageState, readonly StageInput[]>> = {
  waiting: WAITING,
  configured: SERVING,
  training: SERVING,
  evaluating: SERVING,
  'between-runs': WAITING,
  closing: [],
};

export function accepts(state: StageState, input: StageInput): boolean {
  return STAGE_ACCEPTS[state].includes(input);
}

/** Whether a stage in `state` serves a run. */
export function serving(state: StageState): boolean {
  return accepts(state, 'train');
}

/** Throws unless `from -> to` is a transition of the table: anything else is a bug. */
export function checkTransition(from: StageState, to: StageState): void {
  if (!STAGE_TRANSITIONS.some((t) => t.from === from && t.to === to)) {
    throw new Error(`stage: no transition from '${from}' to '${to}' (see stage-states.ts)`);
  }
}

/** The transitions as text, one line each, grouped by state: what stage.ts's header shows. */
export function renderDiagram(): string[] {
  const width = Math.max(...STAGE_STATES.map((s) => s.length));
  const lines: string[] = [];
  for (const from of STAGE_STATES) {
    const out = STAGE_TRANSITIONS.filter((t) => t.from === from);
    const byTrigger = new Map<string, StageState[]>();
    for (const t of out) byTrigger.set(t.on, [...(byTrigger.get(t.on) ?? []), t.to]);
    for (const [on, to] of byTrigger) {
      lines.push(`${from.padEnd(width)}  --${on}-->  ${to.join(' | ')}`);
    }
  }
  return lines;
}
