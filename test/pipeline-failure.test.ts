// Failures a distributed run must survive cleanly: a stage killed mid-run makes the coordinator
// exit non-zero, naming the layer, within a bounded time; the launcher tears every child down
// when one of them fails.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../src/transport/sockets.js';
import { killAll, ROOT, runNode, startNode, startStage, waitForOutput } from './helpers/spawn.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

/** Processes whose command line contains `marker` (pgrep -f), excluding none. */
function processesMatching(marker: string): string[] {
  try {
    return execFileSync('pgrep', ['-f', marker], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .filter(Boolean);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

describe('distributed run failures', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ffx-fail-'));
  });
  after(async () => {
    killAll();
    await rm(dir, { recursive: true, force: true });
  });

  it('a stage killed mid-run: the coordinator exits 1 naming the layer within the heartbeat timeout', async () => {
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const coordinator = startNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        '--config',
        join(ROOT, 'config', 'demo.json'),
        '--epochs',
        '50',
        '--bind',
        control,
        '--heartbeat-timeout',
        '2',
        '--stop-stages',
        '--out',
        join(dir, 'killed'),
      ],
      { timeoutMs: 60_000 },
    );
    const stages = [1, 2].map((layer) => startStage(layer, control, 60_000));
    // Training is under way once the coordinator reports progress.
    await waitForOutput(coordinator.stderr, /epoch 1\/50 25%/, 30_000);
    const killedAt = Date.now();
    stages[1]!.child.kill('SIGKILL');
    const r = await coordinator.result;
    const seconds = (Date.now() - killedAt) / 1000;
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.match(
      r.stderr,
      /^error \[CLUSTER_STAGE_LOST\]: layer 2 \(pid \d+ on .+\) stopped answering/m,
    );
    // 2 s heartbeat timeout, checked every 0.5 s: well under 10 s even on a loaded machine.
    assert.ok(seconds < 10, `coordinator took ${seconds}s to notice`);
    // With --stop-stages the surviving stage is told to exit, and does.
    const s1 = await stages[0]!.result;
    assert.equal(s1.timedOut, false);
    assert.match(s1.stderr, /coordinator says stop/);
  });

  it('ffx-launch stops every child and exits non-zero when a stage fails', async () => {
    const out = join(dir, 'launch');
    // --stage-threads 99 is refused by every stage at start-up, while the coordinator is
    // already waiting for them: the launcher must not wait out the coordinator's 120 s timeout.
    const r = await runNode(
      [
        join(CLI, 'ffx-launch.js'),
        '--config',
        join(ROOT, 'config', 'demo.json'),
        '--backend',
        'wasm',
        '--stage-threads',
        '99',
        '--out',
        out,
      ],
      { timeoutMs: 30_000 },
    );
    assert.equal(r.timedOut, false);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^\[stage \d\] error \[BACKEND_BAD_THREADS\]/m);
    assert.match(r.stderr, /^error \[LAUNCH_FAILED\]: stage \d exited with status 1/m);
    const control = /coordinator on (tcp:\/\/127\.0\.0\.1:\d+)/.exec(r.stderr)?.[1];
    assert.ok(control, 'the launcher says where the coordinator listens');
    // Nothing it started is left: not the coordinator (its --out is unique), not a stage.
    assert.deepEqual(processesMatching(out), []);
    assert.deepEqual(processesMatching(control), []);
  });
});
