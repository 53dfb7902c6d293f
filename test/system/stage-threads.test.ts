// Stages started by hand on one host share it: without --threads each takes the cores over
// the ffx stages running there, not every core.
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { freePort } from '../../src/transport/sockets.js';
import { killAll, ROOT, startNode, waitForOutput } from '../helpers/spawn.js';

const stage = (layer: number, control: string) =>
  startNode(
    [
      join(ROOT, 'dist', 'src', 'cli', 'ffx-stage.js'),
      '--layer',
      String(layer),
      '--coordinator',
      control,
      '--backend',
      'wasm',
      '--no-metrics',
    ],
    { timeoutMs: 30_000 },
  );

describe('a stage without --threads', () => {
  after(() => killAll());

  it('takes its share of the cores when another stage runs on the host', async () => {
    // Nobody at the coordinator's address: the stages wait, which is all this needs.
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const first = stage(1, control);
    await waitForOutput(first.stderr, /listening on/, 20_000);
    const second = stage(2, control);
    await waitForOutput(second.stderr, /listening on/, 20_000);
    // At least the two of this test (a stage of an earlier test may still be leaving).
    const m = /layer 2: (\d+) ffx stages on this host: (\d+) compute thread\(s\) each/.exec(
      second.stderr(),
    );
    assert.ok(m, second.stderr());
    const [stages, threads] = [Number(m[1]), Number(m[2])];
    assert.ok(stages >= 2, `${stages} stages`);
    assert.equal(threads, Math.max(1, Math.floor(availableParallelism() / stages)));
    assert.match(second.stderr(), new RegExp(`simd on, ${threads} threads?\\)`));
    for (const s of [first, second]) {
      s.child.kill('SIGTERM');
      assert.equal((await s.result).code, 0);
    }
  });
});
