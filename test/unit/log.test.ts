import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { RateLimitedLog } from '../../src/log.js';

describe('RateLimitedLog', () => {
  it('writes one line per key an interval, then says how many it held back', async () => {
    const lines: string[] = [];
    const limited = new RateLimitedLog((l) => lines.push(l), 200);
    for (let i = 0; i < 1000; i++) limited.line('junk', `dropped junk ${i}`);
    limited.line('other', 'dropped other');
    assert.deepEqual(lines, ['dropped junk 0', 'dropped other']);
    await sleep(250);
    limited.line('junk', 'dropped junk again');
    limited.line('junk', 'dropped junk once more');
    assert.deepEqual(lines.slice(2), [
      'dropped junk again (and 999 more like it since the last line)',
    ]);
  });
});
