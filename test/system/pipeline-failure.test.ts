// Failures a distributed run must survive cleanly: a stage killed mid-run makes the coordinator
// exit non-zero, naming the layer; a stage stopped with SIGTERM mid-run exits 0 and tells its
// coordinator, which fails at once; the launcher tears every child down when one of them fails.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { freePort } from '../../src/transport/sockets.js';
import { alive, ROOT, runNode, startNode, startStage, waitForOutput } from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

/** The coordinator of a distributed training on `control`, 50 epochs of the demo config, no rollbacks. */
function longRun(control: string, out: string) {
  return startNode(
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
      // No rollbacks: with none, a failed stage fails the run (test/system/pipeline-recovery.test.ts
      // has the run go on).
      '--max-recoveries',
      '0',
      '--stop-stages',
      '--out',
      out,
    ],
    { timeoutMs: 60_000 },
  );
}

describe('distributed run failures', () => {
  const tmp = tempDir('fail');

  it('a stage killed mid-run: the coordinator exits 1 naming the layer', async () => {
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const coordinator = longRun(control, tmp('killed'));
    const stages = [1, 2].map((layer) => startStage(layer, control, 60_000));
    // Training is under way once the coordinator reports progress.
    await waitForOutput(coordinator.stderr, /epoch 1\/50 25%/, 30_000);
    stages[1]!.child.kill('SIGKILL');
    // Noticed by the heartbeat timeout (2 s); the 60 s limit on the process only guards a hang.
    const r = await coordinator.result;
    assert.equal(r.timedOut, false);
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.match(
      r.stderr,
      /^error \[CLUSTER_STAGE_LOST\]: layer 2 \(pid \d+ on .+\) stopped answering/m,
    );
    // With --stop-stages the surviving stage is told to exit, and does.
    const s1 = await stages[0]!.result;
    assert.equal(s1.timedOut, false);
    assert.match(s1.stderr, /coordinator says stop/);
  });

  for (const layer of [2, 1]) {
    const by = layer === 2 ? 'layer 1' : 'the coordinator';
    it(`stage ${layer} advertising an address ${by} cannot reach: the run ends within the heartbeat timeout, naming the link`, async () => {
      const control = `tcp://127.0.0.1:${await freePort()}`;
      const t0 = performance.now();
      const coordinator = longRun(control, tmp(`unreachable-${layer}`));
      const stages = [1, 2].map((l) =>
        startStage(
          l,
          control,
          60_000,
          l === layer ? ['--advertise', 'tcp://nohost.invalid:6001'] : [],
        ),
      );
      const r = await coordinator.result;
      const seconds = (performance.now() - t0) / 1000;
      assert.equal(r.code, 1, r.stderr.slice(-2000));
      // Said when it registered, and named when the link is found down.
      assert.match(
        r.stderr,
        new RegExp(`hello from layer ${layer} .*data at tcp://nohost\\.invalid:6001`),
      );
      assert.match(
        r.stderr,
        layer === 2
          ? /^error \[STAGE_LINK_DOWN\]: layer 1: cannot reach layer 2 at tcp:\/\/nohost\.invalid:6001 within 2s: the address layer 2 advertises/m
          : /^error \[CLUSTER_LINK_DOWN\]: the coordinator cannot reach layer 1 at tcp:\/\/nohost\.invalid:6001 within 2s: the address layer 1 advertises/m,
      );
      // Start-up (backends, data) plus the 2 s heartbeat timeout, not the 300 s progress one.
      assert.ok(seconds < 30, `${seconds.toFixed(1)} s`);
      for (const s of stages) assert.equal((await s.result).code, 0);
    });
  }

  it('SIGTERM to a stage mid-run: it exits 0 and its coordinator fails at once, naming it', async () => {
    const control = `tcp://127.0.0.1:${await freePort()}`;
    // The stage's own word ends the run, long before the 2 s heartbeat timeout would.
    const coordinator = longRun(control, tmp('stopped'));
    const stages = [1, 2].map((layer) => startStage(layer, control, 60_000));
    await waitForOutput(coordinator.stderr, /epoch 1\/50 25%/, 30_000);
    stages[0]!.child.kill('SIGTERM');
    const s1 = await stages[0]!.result;
    assert.equal(s1.code, 0, s1.stderr.slice(-2000));
    assert.match(s1.stderr, /layer 1: SIGTERM, stopping/);
    const r = await coordinator.result;
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.match(
      r.stderr,
      /^error \[STAGE_STOPPED\]: layer 1: the stage stopped \(SIGTERM\) during the run$/m,
    );
    // Told to stop (--stop-stages), the other stage leaves too.
    assert.equal((await stages[1]!.result).code, 0);
  });

  it('ffx-launch stops every child and exits non-zero when a stage fails', async () => {
    const out = tmp('launch');
    // wasm+blas without a BLAS to load is refused by every stage at start-up, while the
    // coordinator is already waiting for them: the launcher must not wait out the
    // coordinator's 120 s timeout.
    const r = await runNode(
      [
        join(CLI, 'ffx-launch.js'),
        '--config',
        join(ROOT, 'config', 'demo.json'),
        '--backend',
        'wasm+blas',
        '--out',
        out,
      ],
      { timeoutMs: 30_000, env: { FFX_BLAS_LIB: '/nonexistent/libcblas.so' } },
    );
    assert.equal(r.timedOut, false);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^\[stage \d\] error \[BACKEND_UNAVAILABLE\]/m);
    assert.match(r.stderr, /^error \[LAUNCH_FAILED\]: stage \d exited with status 1/m);
    // Nothing it started is left: the launcher names every child's pid.
    const pids = [...r.stderr.matchAll(/(coordinator|stage \d) \(pid (\d+)\)/g)].map((m) =>
      Number(m[2]),
    );
    assert.equal(pids.length, 3, r.stderr);
    assert.deepEqual(pids.filter(alive), []);
  });
});
