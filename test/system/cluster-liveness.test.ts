// Lost and stuck are different things, told apart both ways. A stage that heartbeats but makes
// no progress with work outstanding is stalled (after --progress-timeout), not lost; a stage
// whose coordinator goes silent mid-run says so once, drops the run and waits for a new one,
// which --resume latest makes finish the run.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { Dealer, Pull } from 'zeromq';
import { bindAny, closeAll, freePort } from '../../src/transport/sockets.js';
import { PROTOCOL_VERSION, decodeControl, encodeControl } from '../../src/transport/wire.js';
import { ROOT, startNode, startStage, waitForOutput } from '../helpers/spawn.js';
import { smallRun } from '../helpers/runs.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');

describe('liveness: lost, stalled, and a coordinator gone', () => {
  const tmp = tempDir('liveness');

  it('a stage that heartbeats but never answers is stalled, not lost', async () => {
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const coordinator = startNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        '--dataset',
        'fashion-mnist-sample',
        '--layers',
        '784,16',
        '--bind',
        control,
        '--heartbeat-timeout',
        '2',
        '--progress-timeout',
        '3',
        '--max-recoveries',
        '0',
        '--out',
        tmp('stalled'),
      ],
      { timeoutMs: 60_000 },
    );
    // A scripted stage: it registers and heartbeats, and never reads its data.
    const dealer = new Dealer({ linger: 0 });
    const data = new Pull({ receiveHighWaterMark: 1 });
    try {
      const endpoint = await bindAny(data);
      dealer.connect(control);
      const hello = {
        type: 'hello',
        layer: 1,
        last: 1,
        replica: 1,
        replicas: 1,
        version: PROTOCOL_VERSION,
        backend: 'none',
        endpoint,
        exchange: '',
        pid: process.pid,
        host: hostname(),
        token: 'scripted',
        key: '',
        proof: '',
        holds: null,
      } as const;
      await dealer.send(encodeControl(hello));
      const beat = setInterval(
        () =>
          void dealer
            .send(encodeControl({ type: 'heartbeat', layer: 1, token: 'scripted' }))
            .catch(() => {}),
        200,
      );
      try {
        for (;;) {
          const [frame] = await dealer.receive();
          const msg = decodeControl(frame!);
          if (msg.type === 'config') {
            await dealer.send(encodeControl({ type: 'ready', layer: 1, run: msg.run }));
            break;
          }
        }
        const r = await coordinator.result;
        assert.equal(r.code, 1, r.stderr.slice(-2000));
        assert.match(
          r.stderr,
          /^error \[CLUSTER_STAGE_STALLED\]: layer 1 \(pid \d+ on .+\) is alive but made no progress for [3-9]\.\ds with work outstanding$/m,
        );
        assert.doesNotMatch(r.stderr, /CLUSTER_STAGE_LOST/);
      } finally {
        clearInterval(beat);
      }
    } finally {
      closeAll(dealer, data);
    }
  });

  it('a stage whose steps outlast the heartbeat timeout is slow, not lost', async () => {
    // Pure-JS tensors and a wide layer: each step takes about a second on this kind of
    // machine; the heartbeat, on a thread of its own, keeps going meanwhile.
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const out = tmp('slow');
    const coordinator = startNode(
      [
        join(CLI, 'ffx-coordinator.js'),
        'train',
        '--dataset',
        'fashion-mnist-sample',
        '--layers',
        '784,1500',
        '--set',
        'data.trainLimit=300',
        '--set',
        'data.testLimit=100',
        '--epochs',
        '1',
        '--bind',
        control,
        '--heartbeat-timeout',
        '0.3',
        '--max-recoveries',
        '0',
        '--stop-stages',
        '--out',
        out,
      ],
      { timeoutMs: 120_000 },
    );
    startNode(
      [
        join(CLI, 'ffx-stage.js'),
        '--layer',
        '1',
        '--coordinator',
        control,
        '--listen',
        'tcp://127.0.0.1:*',
        '--backend',
        'cpu',
        '--heartbeat-ms',
        '100',
      ],
      { timeoutMs: 120_000 },
    );
    const r = await coordinator.result;
    assert.equal(r.code, 0, r.stderr.slice(-2000));
    const [record] = (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { stages: { stepSeconds: number }[]; batches: number[] });
    const perStep = record!.stages[0]!.stepSeconds / record!.batches[0]!;
    // The point of the test: steps longer than the heartbeat timeout.
    assert.ok(perStep > 0.3, `a step took ${perStep.toFixed(2)}s, not longer than 0.3s`);
    assert.doesNotMatch(r.stderr, /recovering|CLUSTER_STAGE_LOST/);
  });

  it('stages notice a silent coordinator, wait, and a new one with --resume latest finishes the run', async () => {
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const out = tmp('orphaned');
    const train = (extra: string[]) =>
      startNode(
        [
          join(CLI, 'ffx-coordinator.js'),
          'train',
          ...smallRun(3, 300),
          '--bind',
          control,
          '--out',
          out,
          ...extra,
        ],
        { timeoutMs: 90_000 },
      );
    // Heartbeats every 100 ms: with the coordinator gone they fill the socket's queue (16) in
    // under 2 s, and the stages must keep waiting, not abort on the next send.
    const stages = [1, 2].map((l) =>
      startStage(l, control, 120_000, ['--coordinator-timeout', '2', '--heartbeat-ms', '100']),
    );
    const first = train([]);
    await waitForOutput(first.stderr, /epoch 2\/3 \d+% /, 60_000);
    first.child.kill('SIGKILL');
    await first.result;
    // Each stage says so once, drops the run and says hello into the void.
    for (const [i, s] of stages.entries()) {
      await waitForOutput(
        s.stderr,
        new RegExp(`layer ${i + 1}: lost the coordinator \\(not heard from for \\d+s\\)`),
        20_000,
      );
    }
    // ... and counts it, for the FfxCoordinatorLost alert (a dead coordinator exports nothing).
    for (const s of stages) {
      const url = /metrics on (http:\S+)/.exec(s.stderr())![1]!;
      const text = await (await fetch(url)).text();
      assert.match(text, /^ffx_stage_coordinator_lost_total\{[^}]*\} 1$/m);
    }
    await sleep(3000);
    for (const s of stages) assert.equal(s.child.exitCode, null, s.stderr().slice(-2000));
    const second = train(['--resume', 'latest']);
    const r = await second.result;
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.match(r.stderr, /resumed from .*checkpoint-epoch1\.safetensors after epoch 1/);
    assert.match(r.stderr, /lineage: each layer trained 90, 90 batches/);
    for (const s of stages) {
      assert.equal(s.stderr().match(/lost the coordinator/g)?.length, 1, 'said once');
    }
    const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n');
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as { epoch: number }).epoch),
      [1, 2, 3],
    );
  });
});
