// The stage's life as data (src/stage/stage-states.ts): the transition table is the only way a
// state changes, every state can be reached and left as the protocol says, and the diagrams in
// stage.ts's header and docs/protocol.md are the table's own rendering.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  STAGE_ACCEPTS,
  STAGE_INPUTS,
  STAGE_STATES,
  STAGE_TRANSITIONS,
  accepts,
  checkTransition,
  renderDiagram,
  serving,
} from '../../src/stage/stage-states.js';
import { ROOT } from '../helpers/spawn.js';

/** The diagram between the START/END lines of `text`, each line with `prefix` removed. */
function drawnDiagram(text: string, start: string, end: string, prefix: string): string[] {
  const lines = text.split('\n');
  const from = lines.findIndex((l) => l.includes(start));
  const to = lines.findIndex((l, i) => i > from && l.includes(end));
  assert.ok(from >= 0 && to > from, `no diagram between "${start}" and "${end}"`);
  return lines.slice(from + 1, to).map((l) => {
    assert.ok(l.startsWith(prefix), `a diagram line without "${prefix}": ${l}`);
    return l.slice(prefix.length);
  });
}

describe('stage states', () => {
  it('allows exactly the transitions of the table, and throws on any other', () => {
    for (const from of STAGE_STATES) {
      for (const to of STAGE_STATES) {
        if (from === to) continue;
        const listed = STAGE_TRANSITIONS.some((t) => t.from === from && t.to === to);
        if (listed) checkTransition(from, to);
        else assert.throws(() => checkTransition(from, to), /no transition/, `${from} -> ${to}`);
      }
    }
  });

  it('reaches every state from waiting, and closing from every other; closing is the end', () => {
    const reached = new Set<string>(['waiting']);
    for (let grew = true; grew;) {
      grew = false;
      for (const t of STAGE_TRANSITIONS) {
        if (reached.has(t.from) && !reached.has(t.to)) grew = reached.add(t.to) !== undefined;
      }
    }
    assert.deepEqual([...reached].sort(), [...STAGE_STATES].sort());
    for (const s of STAGE_STATES) {
      if (s === 'closing') continue;
      assert.ok(
        STAGE_TRANSITIONS.some((t) => t.from === s && t.to === 'closing'),
        s,
      );
    }
    assert.equal(
      STAGE_TRANSITIONS.some((t) => t.from === 'closing'),
      false,
    );
    assert.deepEqual(STAGE_ACCEPTS.closing, []);
  });

  it('acts on a config only where one leads to configured, and on data only while serving', () => {
    for (const s of STAGE_STATES) {
      const toConfigured = STAGE_TRANSITIONS.some((t) => t.from === s && t.to === 'configured');
      assert.equal(accepts(s, 'config'), toConfigured, `${s} and config`);
      for (const kind of ['train', 'eval', 'marker'] as const) {
        assert.equal(accepts(s, kind), serving(s), `${s} and ${kind}`);
      }
      for (const input of STAGE_ACCEPTS[s]) assert.ok(STAGE_INPUTS.includes(input));
    }
    assert.deepEqual(
      STAGE_STATES.filter((s) => serving(s)),
      ['configured', 'training', 'evaluating'],
    );
  });

  it("stage.ts's header draws the table's diagram", () => {
    const text = readFileSync(join(ROOT, 'src', 'stage', 'stage.ts'), 'utf8');
    const drawn = drawnDiagram(text, 'STATE DIAGRAM', 'END STATE DIAGRAM', '//   ');
    assert.deepEqual(drawn, renderDiagram());
  });

  it("docs/protocol.md draws the table's diagram", () => {
    const text = readFileSync(join(ROOT, 'docs', 'protocol.md'), 'utf8');
    const drawn = drawnDiagram(text, '<!-- stage diagram -->', '<!-- end -->', '');
    assert.deepEqual(drawn, ['```', ...renderDiagram(), '```']);
  });
});
