// What --quiet keeps: results and warnings (a recovery, a lost checkpoint), not progress logs.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PassThrough } from 'node:stream';
import { ConsoleReporter, JsonReporter } from '../../src/coordinator/reporter.js';

function sink(): { out: PassThrough; text: () => string } {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  return { out, text: () => Buffer.concat(chunks).toString('utf8') };
}

describe('reporters with quiet', () => {
  it('the console reporter drops logs and prints warnings', () => {
    const { out, text } = sink();
    const r = new ConsoleReporter({ out, quiet: true, tty: false });
    r.log('checkpoint runs/x/checkpoint-epoch1.safetensors');
    r.warn('recovering [CLUSTER_STAGE_LOST]: layer 2 lost');
    assert.equal(text(), 'recovering [CLUSTER_STAGE_LOST]: layer 2 lost\n');
  });

  it('the JSON reporter drops log events and emits warning events', () => {
    const { out, text } = sink();
    const r = new JsonReporter({ out, quiet: true });
    r.log('checkpoint runs/x/checkpoint-epoch1.safetensors');
    r.warn('recovering [CLUSTER_STAGE_LOST]: layer 2 lost');
    const events = text()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { event: string; message: string });
    assert.deepEqual(
      events.map((e) => [e.event, e.message]),
      [['warning', 'recovering [CLUSTER_STAGE_LOST]: layer 2 lost']],
    );
  });
});
