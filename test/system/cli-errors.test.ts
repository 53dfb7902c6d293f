// Sharp edges as a user meets them: every failure is one `error [CODE]: message` line that
// names the bad flag, path or address (a stack only with --verbose), with exit status 2 for a
// command line that cannot work and 1 for a failure while running.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PARENT_ENV } from '../../src/cli/parent-watch.js';
import { freePort } from '../../src/transport/sockets.js';
import { ROOT, runNode, startCommand, type RunResult } from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

const CLI = join(ROOT, 'dist', 'src', 'cli');
const coordinator = (args: string[]) =>
  runNode([join(CLI, 'ffx-coordinator.js'), ...args], { timeoutMs: 30_000 });
const stage = (args: string[]) =>
  runNode([join(CLI, 'ffx-stage.js'), '--backend', 'cpu', '--no-metrics', ...args], {
    timeoutMs: 30_000,
  });

/** A quick local run of the shipped sample: 784-16-16 on 500 images. */
const TINY = [
  'train',
  '--local',
  '--backend',
  'cpu',
  '--config',
  join(ROOT, 'config', 'demo.json'),
  '--layers',
  '784,16,16',
  '--set',
  'data.trainLimit=500',
  '--set',
  'data.testLimit=100',
  '--epochs',
  '1',
  '--quiet',
  '--no-metrics',
];

/** Exactly one error line, with this code, and no stack trace. */
function assertOneLine(r: RunResult, code: string, status: number): string {
  assert.equal(r.code, status, r.stderr);
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('error'));
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, new RegExp(`^error \\[${code}\\]: `));
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  return lines[0]!;
}

describe('endpoints without a scheme are usage errors that show the right form', () => {
  const cases: [string, string[], string, RegExp][] = [
    [
      'ffx-stage --coordinator localhost:5555',
      ['--layer', '1', '--coordinator', 'localhost:5555'],
      '--coordinator',
      /did you mean tcp:\/\/localhost:5555\?/,
    ],
    [
      'ffx-stage --listen 6000',
      ['--layer', '1', '--coordinator', 'tcp://127.0.0.1:5555', '--listen', '6000'],
      '--listen',
      /did you mean tcp:\/\/127\.0\.0\.1:6000\?/,
    ],
    [
      'ffx-stage --coordinator tcp://host:99999',
      ['--layer', '1', '--coordinator', 'tcp://host:99999'],
      '--coordinator',
      /tcp:\/\/HOST:PORT or ipc:\/\/PATH/,
    ],
  ];
  for (const [name, args, flag, hint] of cases) {
    it(name, async () => {
      const line = assertOneLine(await stage(args), 'BAD_ENDPOINT', 2);
      assert.ok(line.includes(`${flag} must be a ZeroMQ endpoint`), line);
      assert.match(line, hint);
    });
  }

  it('ffx-coordinator train --bind 5555', async () => {
    const line = assertOneLine(await coordinator(['train', '--bind', '5555']), 'BAD_ENDPOINT', 2);
    assert.match(
      line,
      /--bind must be a ZeroMQ endpoint.*did you mean tcp:\/\/127\.0\.0\.1:5555\?/,
    );
  });
});

describe('a launcher that is gone takes the output pipes along: its children still leave as they should', () => {
  // As when ffx-launch is killed: the watched pid (LAUNCHER_PID_FOR_FFX) is not the parent, so
  // the child sees its launcher gone within a second, and the read ends of its stdout and
  // stderr are closed at once, so every line it writes fails with EPIPE.
  const orphan = (args: string[]): Promise<RunResult> => {
    const started = startCommand(process.execPath, args, {
      timeoutMs: 30_000,
      env: { [PARENT_ENV]: '1' },
    });
    started.child.stdout!.destroy();
    started.child.stderr!.destroy();
    return started.result;
  };
  const tmp = tempDir('orphans');

  it('a stage closes and exits 0', async () => {
    const nobody = `tcp://127.0.0.1:${await freePort()}`;
    const r = await orphan([join(CLI, 'ffx-stage.js'), '--layer', '1', '--coordinator', nobody]);
    assert.deepEqual([r.code, r.signal, r.timedOut], [0, null, false]);
  });

  it('a coordinator aborts its run as if hung up on (status 129)', async () => {
    const bind = `tcp://127.0.0.1:${await freePort()}`;
    const r = await orphan([
      join(CLI, 'ffx-coordinator.js'),
      'train',
      '--config',
      join(ROOT, 'config', 'demo.json'),
      '--bind',
      bind,
      '--out',
      tmp('run'),
    ]);
    assert.deepEqual([r.code, r.signal, r.timedOut], [129, null, false]);
  });
});

describe('system errors name the path or the address', () => {
  const tmp = tempDir('edges');
  let blocker: Server;
  before(async () => {
    blocker = createServer().listen(0, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
  });
  after(() => {
    blocker.close();
  });
  const busyPort = () => (blocker.address() as { port: number }).port;

  it('an output directory under a file: FILE_ACCESS, naming it', async () => {
    const file = tmp('a-file');
    await writeFile(file, 'not a directory');
    const out = join(file, 'run');
    const line = assertOneLine(await coordinator([...TINY, '--out', out]), 'FILE_ACCESS', 1);
    assert.ok(line.includes(`cannot write the output directory ${out}`), line);
    assert.match(line, /not a directory/);
  });

  it('a full file-size limit while writing the weights: FILE_NO_SPACE, naming the file', async () => {
    const out = tmp('limited');
    // ulimit -f 100: 100 KiB per file (bash counts KiB); weights and Adam slots are ~155 KB.
    const node = process.execPath;
    const args = [join(CLI, 'ffx-coordinator.js'), ...TINY, '--out', out];
    const r = await startCommand('bash', ['-c', 'ulimit -f 100 && exec "$0" "$@"', node, ...args], {
      timeoutMs: 30_000,
    }).result;
    const line = assertOneLine(r, 'FILE_NO_SPACE', 1);
    assert.ok(line.includes(`cannot write checkpoint ${join(out, 'model.safetensors')}`), line);
    assert.match(line, /file too large/);
    // What was written before the limit was hit is still there; the fragment of the weights is
    // not (written to a temporary file, it never replaced anything and was removed).
    assert.ok((await stat(join(out, 'metrics.jsonl'))).size > 0);
    assert.ok(JSON.parse(await readFile(join(out, 'config.json'), 'utf8')));
    assert.deepEqual(
      (await readdir(out)).filter((f) => f.includes('model') || f.endsWith('.tmp')),
      [],
    );
  });

  it('a coordinator --bind on a port in use: ADDRESS_IN_USE, naming the address', async () => {
    const bind = `tcp://127.0.0.1:${busyPort()}`;
    const r = await coordinator([
      'train',
      '--dataset',
      'fashion-mnist-sample',
      '--bind',
      bind,
      '--no-metrics',
    ]);
    const line = assertOneLine(r, 'ADDRESS_IN_USE', 1);
    assert.ok(line.includes(`${bind} is in use by another process`), line);
  });

  it('a run that fails before it writes leaves no empty DIR-2 behind', async () => {
    const out = tmp('claimed');
    await mkdir(out);
    await writeFile(join(out, 'metrics.jsonl'), ''); // a run was here
    const r = await coordinator([
      'train',
      '--dataset',
      'fashion-mnist-sample',
      '--bind',
      `tcp://127.0.0.1:${busyPort()}`,
      '--out',
      out,
      '--no-metrics',
    ]);
    assertOneLine(r, 'ADDRESS_IN_USE', 1);
    assert.match(r.stderr, /claimed holds a run already: this one writes to .*claimed-2/);
    assert.equal(existsSync(`${out}-2`), false, 'claimed-2 is left behind');
  });

  it('a stage --listen on a port in use: ADDRESS_IN_USE, naming the address', async () => {
    const listen = `tcp://127.0.0.1:${busyPort()}`;
    const control = `tcp://127.0.0.1:${await freePort()}`;
    const r = await stage(['--layer', '1', '--coordinator', control, '--listen', listen]);
    const line = assertOneLine(r, 'ADDRESS_IN_USE', 1);
    assert.ok(line.includes(`layer 1: cannot listen for data: ${listen} is in use`), line);
  });

  it('a missing checkpoint: FILE_ACCESS, naming it; --verbose adds the stack', async () => {
    const missing = tmp('nope.safetensors');
    const args = ['eval', '--local', '--backend', 'cpu', '--weights', missing, '--no-metrics'];
    const line = assertOneLine(await coordinator(args), 'FILE_ACCESS', 1);
    assert.ok(line.includes(`cannot read checkpoint ${missing}`), line);
    const verbose = await coordinator([...args, '--verbose']);
    assert.equal(verbose.code, 1);
    assert.match(verbose.stderr, /^error \[FILE_ACCESS\]: /m);
    assert.match(verbose.stderr, /\n\s+at /, 'a stack with --verbose');
  });
});

describe('flags mean one thing, and a command lists only those it takes', () => {
  const launch = (args: string[]) =>
    runNode([join(CLI, 'ffx-launch.js'), ...args], { timeoutMs: 30_000 });

  it("ffx-launch's --help leaves out the coordinator flags it refuses, and each is refused with why", async () => {
    const help = await launch(['--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /--stage-threads/);
    const refused = {
      '--local': 'for a single process use ffx-coordinator train --local',
      '--bind=tcp://127.0.0.1:5555': 'picks the control endpoint itself',
      '--key=k': 'use --keys DIR',
      '--insecure': 'listens on this host only',
      '--threads=2': '--stage-threads sets',
      '--metrics-port=9999': 'on free ports it prints',
    };
    for (const [flag, why] of Object.entries(refused)) {
      const name = flag.split('=')[0]!;
      assert.doesNotMatch(help.stdout, new RegExp(`${name}\\b(?!-)`), `--help lists ${name}`);
      const r = await launch(['--config', join(ROOT, 'config', 'demo.json'), flag]);
      assert.equal(r.code, 2, `${flag}: ${r.stderr}`);
      assert.ok(r.stderr.startsWith(`error [USAGE]: ${name}: `), r.stderr);
      assert.ok(r.stderr.includes(why), r.stderr);
    }
  });

  it('--device is GPU or an index, and nothing else', async () => {
    const r = await stage([
      '--layer',
      '1',
      '--coordinator',
      'tcp://127.0.0.1:1',
      '--device',
      'cuda',
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(
      r.stderr.trim(),
      `error [USAGE]: --device must be GPU or a GPU's index (0, 1, ...); got "cuda"`,
    );
  });

  it('a number flag given something else, or out of its range, names the flag and the text', async () => {
    const launch = (args: string[]) =>
      runNode([join(CLI, 'ffx-launch.js'), ...args], { timeoutMs: 30_000 });
    const cases: [Promise<RunResult>, string][] = [
      [coordinator([...TINY, '--batch-size', 'abc']), '--batch-size must be a number; got "abc"'],
      [
        stage(['--layer', 'one', '--coordinator', 'tcp://127.0.0.1:1']),
        '--layer: "one" is not a layer or a run of layers: give N (e.g. 2) or FIRST-LAST (e.g. 2-3), 1-based, FIRST <= LAST',
      ],
      [
        coordinator([...TINY, '--metrics-port=99999']),
        '--metrics-port must be an integer from 0 to 65535; got "99999"',
      ],
      [
        coordinator([...TINY, '--threads', '0']),
        '--threads must be an integer from 1 to 8; got "0"',
      ],
      [
        launch(['--config', join(ROOT, 'config', 'demo.json'), '--stage-threads', '0']),
        '--stage-threads must be an integer from 1 to 8; got "0"',
      ],
      [coordinator(['trian']), 'unknown command trian: did you mean train?'],
    ];
    for (const [run, message] of cases) {
      const r = await run;
      assert.equal(r.code, 2, r.stderr);
      assert.equal(r.stderr.trim().split('\n').pop(), `error [USAGE]: ${message}`);
    }
  });

  it('a run config given to a stage says where it goes', async () => {
    const r = await stage([
      '--layer',
      '1',
      '--coordinator',
      'tcp://127.0.0.1:1',
      '-c',
      join(ROOT, 'config', 'demo.json'),
    ]);
    const line = assertOneLine(r, 'USAGE', 2);
    assert.match(
      line,
      /--config: that is a run config \(it has .*model.*\): a stage takes its run config from the coordinator/,
    );
  });

  it('ffx-launch needs a config (or a checkpoint to resume)', async () => {
    const r = await runNode([join(CLI, 'ffx-launch.js'), '--epochs', '1'], { timeoutMs: 30_000 });
    const line = assertOneLine(r, 'USAGE', 2);
    assert.match(
      line,
      /ffx-launch needs --config FILE \(e\.g\. config\/demo\.json\) or --resume CHECKPOINT/,
    );
  });

  it('-c is --config in every command (a stage reads its flags from it)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ffx-c-'));
    try {
      const file = join(dir, 'stage.json');
      await writeFile(file, JSON.stringify({ layer: 1, coordinator: 'localhost:5555' }));
      // The file's coordinator is read (and refused for its missing scheme): -c took the file.
      const r = await stage(['-c', file]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /--coordinator must be a ZeroMQ endpoint.*got "localhost:5555"/);
      for (const cli of ['ffx-coordinator.js', 'ffx-launch.js', 'ffx-stage.js']) {
        const help = await runNode(
          [join(CLI, cli), ...(cli === 'ffx-coordinator.js' ? ['train'] : []), '--help'],
          {
            timeoutMs: 30_000,
          },
        );
        assert.match(help.stdout, /-c, --config/, cli);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
