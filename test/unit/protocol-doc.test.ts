// docs/protocol.md against the wire module: the version, every message table (data kinds with
// their header fields, marker ops, control and result types with their fields) and the bounds
// table must say what src/transport/wire.ts and bounds.ts do. A change to the wire fails here
// until the document says it.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import * as bounds from '../../src/transport/bounds.js';
import {
  CONTROL_FIELDS,
  DATA_FIELDS,
  DATA_KINDS,
  HEADER_FIELDS,
  MARKER_OPS,
  PROTOCOL_VERSION,
  RESULT_TYPES,
} from '../../src/transport/wire.js';
import { ROOT } from '../helpers/spawn.js';

const DOC = readFileSync(join(ROOT, 'docs', 'protocol.md'), 'utf8');

/** The text of section `## title`, up to the next `## `. */
export function section(doc: string, title: string): string {
  const start = doc.indexOf(`\n## ${title}\n`);
  assert.ok(start >= 0, `docs/protocol.md has no section "## ${title}"`);
  const end = doc.indexOf('\n## ', start + 1);
  return doc.slice(start, end < 0 ? undefined : end);
}

/** The body rows of the first table in `text`, as cells. */
export function tableRows(text: string): string[][] {
  const lines = text.split('\n').filter((l) => l.startsWith('|'));
  return lines.slice(2).map((l) =>
    l
      .slice(1, -1)
      .split('|')
      .map((c) => c.trim()),
  );
}

/** The `code` names of a cell or line, leaving out what stands in parentheses (explanations). */
export function codeNames(text: string): string[] {
  let flat = text;
  for (let prev = ''; prev !== flat;) [prev, flat] = [flat, flat.replace(/\([^()]*\)/g, '')];
  return [...flat.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
}

/** "64 KiB" -> 65536, "2 s" -> 2000 (for a name ending in _MS), "16" -> 16. */
function parseValue(name: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|s)?$/.exec(text);
  assert.ok(m, `bounds: ${name}'s value "${text}" is not a number with an optional unit`);
  const n = Number(m[1]);
  const unit = m[2];
  if (unit === 's') {
    assert.ok(name.endsWith('_MS'), `bounds: ${name} is not a time (_MS), but "${text}"`);
    return n * 1000;
  }
  return n * (unit ? 1024 ** (['KiB', 'MiB', 'GiB'].indexOf(unit) + 1) : 1);
}

/** type -> fields of a table whose first column is the type and `fieldColumn` the fields. */
function messageTable(text: string, fieldColumn: number): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const row of tableRows(text)) {
    const [type] = codeNames(row[0]!);
    assert.ok(type, `a row without a message type: | ${row.join(' | ')} |`);
    out.set(type, codeNames(row[fieldColumn]!));
  }
  return out;
}

function checkMessages(doc: string): void {
  // Data: the kinds, the header fields common to all, each kind's own fields, the marker ops.
  const data = section(doc, 'Data messages (upstream -> stage, in order)');
  const common = /Header fields common to all: ([^\n]*(?:\n(?!\n)[^\n]*)*)/.exec(data);
  assert.ok(common, 'no "Header fields common to all" line');
  assert.deepEqual(codeNames(common[1]!), ['v', 'kind', ...Object.keys(HEADER_FIELDS), 'tensors']);
  const kinds = messageTable(data, 1);
  assert.deepEqual([...kinds.keys()], [...DATA_KINDS], 'data kinds');
  for (const kind of DATA_KINDS) {
    assert.deepEqual(kinds.get(kind), Object.keys(DATA_FIELDS[kind]), `fields of ${kind}`);
  }
  const ops = /Marker ops: ([^\n]*(?:\n(?!\n)[^\n]*)*)/.exec(data);
  assert.ok(ops, 'no "Marker ops:" paragraph');
  assert.deepEqual(codeNames(ops[1]!), [...MARKER_OPS], 'marker ops');
  // Results and control: every type once, with its fields in the code's order.
  const results = messageTable(
    section(doc, 'Results (stage -> coordinator, control connection)'),
    2,
  );
  const control = messageTable(section(doc, 'Control (coordinator <-> stage, control socket)'), 2);
  assert.deepEqual([...results.keys()].sort(), [...RESULT_TYPES].sort(), 'result types');
  const controlTypes = Object.keys(CONTROL_FIELDS).filter(
    (t) => !(RESULT_TYPES as readonly string[]).includes(t),
  );
  assert.deepEqual([...control.keys()].sort(), controlTypes.sort(), 'control types');
  for (const [type, fields] of Object.entries(CONTROL_FIELDS)) {
    const documented = results.get(type) ?? control.get(type);
    assert.deepEqual(documented, Object.keys(fields), `fields of '${type}'`);
  }
}

function checkVersion(doc: string): void {
  const said = [...doc.matchAll(/(?:protocol|version|`v`)\W{0,3}(?:is\s+|version\s+)?(\d+)/gi)];
  assert.ok(said.length >= 3, 'the version is named in the title, the text and the header');
  for (const m of said) {
    assert.equal(Number(m[1]), PROTOCOL_VERSION, `"${m[0]}": the code speaks ${PROTOCOL_VERSION}`);
  }
}

function checkBounds(doc: string): void {
  const rows = tableRows(section(doc, 'Bounds'));
  const documented = new Map(rows.map((r) => [codeNames(r[0]!)[0]!, r[1]!]));
  assert.deepEqual([...documented.keys()].sort(), Object.keys(bounds).sort(), 'bounds listed');
  for (const [name, text] of documented) {
    const value = (bounds as Record<string, number>)[name];
    assert.equal(parseValue(name, text), value, `${name}: the document says ${text}`);
  }
  // Every bound the text names is one of them.
  for (const m of doc.matchAll(/`([A-Z][A-Z_]+(?:_BYTES|_HWM|_MS|_MESSAGES|_RUNS))`/g)) {
    assert.ok(m[1]! in bounds, `the text names \`${m[1]}\`, which bounds.ts does not have`);
  }
}

describe('docs/protocol.md', () => {
  it(`names protocol version ${PROTOCOL_VERSION} wherever it names one`, () => checkVersion(DOC));
  it('lists every message with the fields the wire module checks, in its order', () =>
    checkMessages(DOC));
  it('lists every bound of src/transport/bounds.ts with its value', () => checkBounds(DOC));

  // The checks themselves fail on a stale document: each edit below is one kind of drift.
  const stale: [string, (doc: string) => string, (doc: string) => void][] = [
    [
      'an old version',
      (d) => d.replace(`\`v\` (${PROTOCOL_VERSION})`, `\`v\` (${PROTOCOL_VERSION - 1})`),
      checkVersion,
    ],
    ['a field missing', (d) => d.replace('`nPos`, `lr`', '`nPos`'), checkMessages],
    [
      'a field renamed',
      (d) => d.replace('`optimizerStep`, `tensors`', '`step`, `tensors`'),
      checkMessages,
    ],
    ['a type missing', (d) => d.replace(/\n\| `rejected` [^\n]*/, ''), checkMessages],
    ['a marker op missing', (d) => d.replace(/, `stop` \(as `end`/, ' (as `end`'), checkMessages],
    ['a bound changed', (d) => d.replace('| `DATA_HWM` | 4 |', '| `DATA_HWM` | 8 |'), checkBounds],
    ['a bound missing', (d) => d.replace(/\n\| `PAST_RUNS` [^\n]*/, ''), checkBounds],
  ];
  for (const [what, edit, check] of stale) {
    it(`fails on a document with ${what}`, () => {
      const edited = edit(DOC);
      assert.notEqual(edited, DOC, `the edit for "${what}" matched nothing`);
      assert.throws(() => check(edited), assert.AssertionError);
    });
  }
});
