// Garbage costs nothing. During a training run, thousands of malformed messages of every kind
// go to both stages' data sockets and the coordinator's control socket, with oversized frames
// and junk on the /metrics ports: the run completes with exactly the weights of a quiet one,
// the stages' memory stays bounded, and every rejection counter matches what was sent. And a
// stage that waits for its config holds nothing of large messages sent to it.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { pack } from 'msgpackr';
import { Dealer, type Push } from 'zeromq';
import { closeAll, dataPush, freePort } from '../../src/transport/sockets.js';
import {
  type ControlMessage,
  PROTOCOL_VERSION,
  decodeControl,
  encodeControl,
} from '../../src/transport/wire.js';
import { metricsUrl, scrape, seriesValue } from '../helpers/metrics.js';
import { ROOT, startNode, startStage, waitForOutput } from '../helpers/spawn.js';
import { smallRun, referenceRun } from '../helpers/runs.js';
import { maxWeightDiff } from '../helpers/weights.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');
// Long enough (about 10 s) for the fuzzing to happen while it trains.
const RUN = smallRun(20);
const PER_KIND = 300;
/** A stage of this run, junk and all, stays under this (about twice its quiet size). */
const RSS_BOUND_MB = 600;

/** Malformed data messages, each of a kind a stage rejects with a known code. */
function junk(i: number): [string, Buffer[]][] {
  const x = Buffer.alloc(2 * 4 * 4);
  const header = (h: Record<string, unknown>) => pack(h);
  const train = {
    v: PROTOCOL_VERSION,
    kind: 'train',
    run: 'fuzz',
    epoch: 0,
    seq: i,
    nPos: 2,
    lr: 1,
  };
  return [
    ['BAD_FRAMES', [Buffer.from([0xc1, i & 0xff, (i >> 8) & 0xff, 0x13])]],
    ['BAD_VERSION', [header({ ...train, v: 99, tensors: [{ name: 'x', shape: [4, 2] }] }), x]],
    ['BAD_KIND', [header({ ...train, kind: 'gossip', tensors: [] })]],
    ['BAD_SHAPE', [header({ ...train, tensors: [{ name: 'x', shape: [4, 2] }] }), x.subarray(4)]],
    ['BAD_HEADER', [header({ ...train, seq: -i - 1, tensors: [{ name: 'x', shape: [4, 2] }] }), x]],
    // Well formed, but of a run this stage never served.
    ['BAD_RUN', [header({ ...train, tensors: [{ name: 'x', shape: [4, 2] }] }), x]],
  ];
}

/**
 * Forged results and coordinator-only messages, from a peer that registered for no layer:
 * each is dropped as 'foreign' (the run has no layer 99; layers 1 and 2 belong to others).
 */
function forged(i: number): ControlMessage {
  const run = `run-${i}`;
  const forgeries: ControlMessage[] = [
    {
      type: 'stats',
      layer: 99,
      run,
      epoch: 0,
      seq: i,
      loss: 0,
      goodnessPos: 0,
      goodnessNeg: 0,
      stepMs: 0,
      waitMs: 0,
      transportMs: 0,
      blockedMs: 0,
      logits: new Float32Array(0),
    },
    {
      type: 'weights',
      layer: 1,
      run,
      epoch: 20,
      optimizerStep: i,
      tensors: { 'layers.0.weight': { shape: [2], data: new Float32Array([i, -i]) } },
    },
    { type: 'rejected', layer: 2, run, code: 'BAD_FRAMES', reason: 'forged' },
    { type: 'goodness', layer: 1, run, epoch: 0, seq: i, images: 1, g: new Float32Array(10) },
    { type: 'ack', layer: 2, run, op: 'end', id: i, epoch: 0 },
    { type: 'ready', layer: 1, run },
    { type: 'error', run, layer: 2, code: 'STAGE_FAILED', message: 'forged' },
    { type: 'abort', run, reason: 'forged' },
    { type: 'stop', reason: 'forged' },
  ];
  return forgeries[i % forgeries.length]!;
}

/** Control-socket junk for the coordinator, each dropped with a known reason. */
function controlJunk(i: number): [string, Buffer][] {
  return [
    ['malformed', Buffer.from([0xc1, i & 0xff])],
    ['foreign', encodeControl(forged(i))],
    // Large, from a connection that registered no layer: dropped before it is decoded.
    ['foreign', Buffer.alloc(100_000, 0x81)],
    ['unregistered', encodeControl({ type: 'heartbeat', layer: 1 + (i % 2), token: `fuzz-${i}` })],
    [
      'refused',
      encodeControl({
        type: 'hello',
        // A layer the run lacks, or (every other time) one registered stage holds.
        layer: i % 2 ? 7 : 1,
        last: i % 2 ? 7 : 1,
        replica: 1,
        replicas: 1,
        version: PROTOCOL_VERSION,
        backend: 'wasm',
        // Every third time an endpoint a neighbour could not even connect to.
        endpoint: i % 3 ? 'tcp://127.0.0.1:1' : 'not-an-endpoint',
        exchange: '',
        pid: i,
        host: 'fuzz',
        token: 'fuzz',
        key: '',
        proof: '',
        holds: null,
      }),
    ],
  ];
}

/** A live process's resident memory in MB (0 once it is gone: the test then says why). */
function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

interface Counter {
  url: string;
  series: string;
  /** What junk moves it (a key of the test's `sent`). */
  kind: string;
}

/** A counter's value now; 0 before its first increment (no series yet). */
async function read(c: Counter): Promise<number> {
  const text = await scrape(c.url);
  return text.includes(`\n${c.series} `) ? seriesValue(text, c.series) : 0;
}

function count(text: string, pattern: RegExp): number {
  return text.match(pattern)?.length ?? 0;
}

/** Raw bytes to an HTTP port, then close: the server must shrug it off. */
function junkHttp(url: string): Promise<void> {
  const { port } = new URL(url);
  return new Promise((resolve) => {
    const s = connect(Number(port), '127.0.0.1', () => {
      s.end('\x00\xffGARBAGE /metrics HTTP/9.9\r\nContent-Length: -1\r\n\r\n' + 'x'.repeat(5000));
    });
    s.resume(); // read (and drop) whatever the server answers, so its close is seen
    s.on('error', () => resolve());
    s.on('close', () => resolve());
  });
}

describe('fuzzing a live run', () => {
  const tmp = tempDir('fuzz');

  it("completes with the quiet run's weights, bounded memory and exact rejection counts", async (t) => {
    const local = await referenceRun(RUN);

    const control = `tcp://127.0.0.1:${await freePort()}`;
    const stages = [1, 2].map((l) => startStage(l, control, 180_000));
    const coordinator = startNode(
      [join(CLI, 'ffx-coordinator.js'), 'train', ...RUN, '--bind', control, '--out', tmp('fuzzed')],
      { timeoutMs: 180_000 },
    );
    await waitForOutput(coordinator.stderr, /epoch 1\/20 \d+% /, 60_000);
    const endpoints = [1, 2].map(
      (l) =>
        new RegExp(`layer ${l} ready on .* at (tcp://127\\.0\\.0\\.1:\\d+)`).exec(
          coordinator.stderr(),
        )![1]!,
    );
    const pids = stages.map((s) => s.child.pid!);
    let peak = 0;
    const sampler = setInterval(() => {
      for (const pid of pids) peak = Math.max(peak, rssMb(pid));
    }, 100);
    sampler.unref();

    // Every counter the junk moves, as it stands before any.
    const cUrl = metricsUrl(coordinator.stderr());
    const watched: Counter[] = [
      ...['malformed', 'foreign', 'unregistered', 'refused'].map((reason) => ({
        url: cUrl,
        series: `ffx_coordinator_dropped_messages_total{reason="${reason}",role="coordinator"}`,
        kind: reason,
      })),
      ...stages.flatMap((st, i) =>
        junk(0).map(([code]) => ({
          url: metricsUrl(st.stderr()),
          series: `ffx_stage_rejected_messages_total{reason="${code}",role="stage",layer="${i + 1}"}`,
          kind: code,
        })),
      ),
    ];
    const before = await Promise.all(watched.map(read));

    const sent = new Map<string, number>();
    const pushes: Push[] = [];
    const dealer = new Dealer({ linger: 0 });
    dealer.connect(control);
    try {
      // Each kind from its own connection, to both stages.
      const kinds = junk(0).map(([code]) => code);
      const byKind = new Map<string, Push[]>(
        kinds.map((k) => [k, endpoints.map((e) => dataPush(e))]),
      );
      for (const list of byKind.values()) pushes.push(...list);
      for (let i = 0; i < PER_KIND; i++) {
        for (const [code, frames] of junk(i)) {
          for (const p of byKind.get(code)!) await p.send(frames);
          sent.set(code, (sent.get(code) ?? 0) + 1);
        }
        for (const [reason, frame] of controlJunk(i)) {
          await dealer.send(frame);
          sent.set(reason, (sent.get(reason) ?? 0) + 1);
        }
      }
      // Frames far over the largest message of the run: ZeroMQ drops the connection unread.
      // (Not awaited: a send waits while the stage keeps dropping the connection.)
      const huge = Buffer.alloc(64 * 1024 * 1024);
      for (const e of endpoints) {
        const big = dataPush(e, { lingerMs: 0 });
        pushes.push(big);
        void big.send([Buffer.alloc(1), huge]).catch(() => {});
      }
      await sleep(1000);
      for (const s of [coordinator, ...stages]) await junkHttp(metricsUrl(s.stderr()));

      // Every piece of junk was counted once, by its reason (read while the run goes on).
      for (const [i, c] of watched.entries()) {
        const want = before[i]! + sent.get(c.kind)!;
        for (let n = 0; n < 200 && (await read(c)) < want; n++) await sleep(50);
        assert.equal(await read(c), want, c.series);
      }
      // What the coordinator answered (refused hellos, unknown heartbeats) names no run: its
      // id would let junk pass for the run's data.
      dealer.receiveTimeout = 500;
      let answers = 0;
      for (;;) {
        const [frame] = await dealer.receive().catch(() => [undefined]);
        if (!frame) break;
        const msg = decodeControl(frame);
        assert.ok(msg.type === 'error' && msg.run === '', JSON.stringify(msg));
        answers++;
      }
      assert.equal(answers, 2 * PER_KIND, 'a refused hello and an unknown heartbeat each');
    } finally {
      closeAll(dealer, ...pushes);
    }

    const r = await coordinator.result;
    clearInterval(sampler);
    for (const st of stages)
      assert.equal(st.child.exitCode, null, `a stage died:\n${st.stderr().slice(-3000)}`);
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.equal(
      await maxWeightDiff(join(local, 'model.safetensors'), tmp('fuzzed', 'model.safetensors')),
      0,
    );
    t.diagnostic(
      `peak stage RSS ${peak.toFixed(0)} MB; sent ${[...sent].map(([k, n]) => `${k} ${n}`).join(', ')}`,
    );
    assert.ok(peak < RSS_BOUND_MB, `a stage reached ${peak.toFixed(0)} MB`);
    // Thousands of refusals, a line per reason in the logs (they are rate-limited).
    assert.ok(count(r.stderr, /coordinator: dropped /g) <= 6, r.stderr.slice(-3000));
    for (const st of stages) assert.ok(count(st.stderr(), /rejected a message/g) <= 6);
    for (const s of stages) s.child.kill('SIGTERM');
    for (const s of stages) assert.equal((await s.result).code, 0);
  });

  it('a stage waiting for its config takes no large message: six 32 MiB senders leave it as it was', async (t) => {
    // Nobody at the coordinator's address: the stage waits for a config, listening.
    const stage = startStage(1, `tcp://127.0.0.1:${await freePort()}`, 60_000);
    await waitForOutput(stage.stderr, /listening on tcp/, 30_000);
    const endpoint = /listening on (tcp:\/\/127\.0\.0\.1:\d+)/.exec(stage.stderr())![1]!;
    await sleep(500);
    const pid = stage.child.pid!;
    const quiet = rssMb(pid);
    const frame = Buffer.alloc(32 * 1024 * 1024, 7);
    const pushes = Array.from({ length: 6 }, () => dataPush(endpoint, { lingerMs: 0 }));
    let peak = quiet;
    try {
      // Not awaited: the stage drops each connection at the first oversized frame, and a send
      // waits for one to take it.
      for (const p of pushes) for (let i = 0; i < 4; i++) void p.send(frame).catch(() => {});
      for (let i = 0; i < 30; i++) {
        await sleep(100);
        peak = Math.max(peak, rssMb(pid));
      }
    } finally {
      closeAll(...pushes);
    }
    t.diagnostic(`waiting stage: ${quiet.toFixed(0)} MB quiet, ${peak.toFixed(0)} MB at most`);
    // ZeroMQ reads at most 64 KiB of a message before a config: 768 MiB sent, none held.
    assert.ok(peak - quiet < 32, `${quiet.toFixed(0)} -> ${peak.toFixed(0)} MB`);
    // Small junk still gets through, to be refused: the socket serves on.
    const small = dataPush(endpoint);
    try {
      await small.send(junk(0).find(([code]) => code === 'BAD_RUN')![1]);
      const url = metricsUrl(stage.stderr());
      const c = {
        url,
        series: 'ffx_stage_rejected_messages_total{reason="BAD_RUN",role="stage",layer="1"}',
        kind: '',
      };
      for (let i = 0; i < 100 && (await read(c)) < 1; i++) await sleep(50);
      assert.equal(await read(c), 1);
    } finally {
      closeAll(small);
    }
    stage.child.kill('SIGTERM');
    assert.equal((await stage.result).code, 0);
  });

  it('junk that flows while the stages take their config (and bind again) leaves them serving', async () => {
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const stages = [1, 2].map((l) => startStage(l, control, 120_000));
    const endpoints = await Promise.all(
      stages.map(async (s, i) => {
        await waitForOutput(s.stderr, /listening on tcp/, 30_000);
        return new RegExp(`layer ${i + 1}: listening on (tcp://127\\.0\\.0\\.1:\\d+)`).exec(
          s.stderr(),
        )![1]!;
      }),
    );
    // A few hundred tiny messages a second into each stage, from before its config until the
    // run is over: the rebind at config must not meet a receive() it refuses.
    const pushes = endpoints.map((e) => {
      const p = dataPush(e, { lingerMs: 0 });
      p.sendTimeout = 100; // a stage busy with real work (or gone) does not hold the stream up
      return p;
    });
    let flowing = true;
    const stream = (async () => {
      for (let i = 0; flowing; i++) {
        await Promise.all(pushes.map((p) => p.send(junk(i)[0]![1]).catch(() => {})));
        if (i % 20 === 0) await sleep(1);
      }
    })();
    try {
      const coordinator = startNode(
        [
          join(CLI, 'ffx-coordinator.js'),
          'train',
          ...smallRun(2),
          '--bind',
          control,
          '--stop-stages',
          '--out',
          tmp('rebind'),
        ],
        { timeoutMs: 120_000 },
      );
      const r = await coordinator.result;
      assert.equal(r.code, 0, r.stderr.slice(-3000));
      assert.match(r.stderr, /lineage: each layer trained 60, 60 batches/);
    } finally {
      flowing = false;
      await stream;
      closeAll(...pushes);
    }
    for (const s of stages) {
      const done = await s.result;
      assert.equal(done.code, 0, done.stderr.slice(-2000));
      assert.match(done.stderr, /rejected a message \(BAD_FRAMES\)/);
    }
  });
});
