// ffx-launch's supervisor on small scripts: a process killed by a signal is started again (up
// to the bound), the run is over when the main process exits 0, a failure or an interrupt ends
// it, and nothing is left running either way.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Supervisor, describeExit, type Child, type ChildSpec } from '../../src/cli/supervisor.js';
import { tempDir } from '../helpers/temp-dir.js';

/** A script that writes its pid to `pidFile` (when given), then runs `body`. */
const SCRIPT = `
const [pidFile, body] = process.argv.slice(2);
if (pidFile !== '-') require('node:fs').appendFileSync(pidFile, process.pid + '\\n');
eval(body);
`;

describe('Supervisor', () => {
  const tmp = tempDir('supervisor');
  let script = '';
  const started: Child[] = [];
  before(async () => {
    script = tmp('child.cjs');
    await writeFile(script, SCRIPT);
  });
  after(() => {
    for (const c of started) c.proc.kill('SIGKILL');
  });

  const spec = (name: string, body: (restart: boolean) => string, pidFile = '-'): ChildSpec => ({
    name,
    script,
    env: process.env,
    args: (restart) => [pidFile, body(restart)],
  });
  const supervisor = (maxRestarts = 2, graceMs = 2000) => {
    const lines: string[] = [];
    const s = new Supervisor({
      maxRestarts,
      graceMs,
      log: (l) => lines.push(l),
      started: (c) => started.push(c),
    });
    return { s, lines };
  };
  const alive = (c: Child) => c.proc.exitCode === null && c.proc.signalCode === null;

  it('starts a process killed by a signal again, with its restart arguments, and ends with the main one', async () => {
    const { s, lines } = supervisor();
    const first = started.length;
    // The worker kills itself on its first start; started again it waits to be stopped.
    s.start(spec('main', () => 'setTimeout(() => process.exit(0), 1500)'));
    s.start(
      spec('worker', (restart) =>
        restart
          ? 'process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000)'
          : 'process.kill(process.pid, "SIGKILL")',
      ),
    );
    assert.equal(await s.run(), 'ok');
    assert.ok(
      lines.some((l) =>
        /^worker was killed by SIGKILL \(status 137\); started again as pid \d+ \(restart 1 of 2\)$/.test(
          l,
        ),
      ),
      lines.join('\n'),
    );
    // The restarted worker had no run to leave: it was stopped, and that is no failure.
    assert.ok(lines.some((l) => l === 'worker was started again after the run ended; stopping it'));
    assert.ok(started.slice(first).every((c) => !alive(c)));
  });

  it('starts every process, a restart too, with the node options it was given', async () => {
    const flags = ['--initial-heap-size=128', '--no-memory-reducer'];
    const s = new Supervisor({
      maxRestarts: 1,
      graceMs: 2000,
      nodeFlags: flags,
      log: () => {},
      started: (c) => started.push(c),
    });
    const out = tmp('execargv.json');
    // Killed on its first start; started again, it writes what node was started with.
    s.start(
      spec('main', (restart) =>
        restart
          ? `require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify(process.execArgv))`
          : 'process.kill(process.pid, "SIGKILL")',
      ),
    );
    assert.equal(await s.run(), 'ok');
    assert.deepEqual(JSON.parse(await readFile(out, 'utf8')), flags);
  });

  it('gives up on a process killed more often than the bound', async () => {
    const { s } = supervisor(1);
    s.start(spec('main', () => 'setInterval(() => {}, 1000)'));
    s.start(spec('worker', () => 'process.kill(process.pid, "SIGKILL")'));
    assert.equal(await s.run(), 'worker was killed by SIGKILL (status 137)');
  });

  it('ends the run on a process that fails, and stops the others', async () => {
    const { s } = supervisor();
    const main = s.start(spec('main', () => 'setInterval(() => {}, 1000)'));
    s.start(spec('worker', () => 'setTimeout(() => process.exit(3), 200)'));
    assert.equal(await s.run(), 'worker exited with status 3');
    assert.equal(alive(main), false);
  });

  it('fails a run whose other processes do not leave within the grace period', async () => {
    const { s } = supervisor(2, 500);
    s.start(spec('main', () => 'setTimeout(() => process.exit(0), 300)'));
    s.start(spec('worker', () => 'process.on("SIGTERM", () => {}); setInterval(() => {}, 1000)'));
    const t0 = performance.now();
    assert.equal(await s.run(), 'stages did not exit within 0.5s after the run');
    // SIGTERM is ignored: SIGKILL after 3 s more.
    assert.ok(performance.now() - t0 < 6000);
  });

  it('stops everything at once on interrupt()', async () => {
    const { s } = supervisor();
    const kids = [
      s.start(spec('main', () => 'setInterval(() => {}, 1000)')),
      s.start(spec('worker', () => 'setInterval(() => {}, 1000)')),
    ];
    setTimeout(() => s.interrupt(), 300);
    const t0 = performance.now();
    assert.equal(await s.run(), 'interrupted');
    assert.ok(performance.now() - t0 < 2000);
    assert.ok(kids.every((c) => !alive(c)));
  });

  it('describes exits as a shell would', () => {
    assert.equal(describeExit({ code: 2, signal: null }), 'exited with status 2');
    assert.equal(
      describeExit({ code: null, signal: 'SIGTERM' }),
      'was killed by SIGTERM (status 143)',
    );
  });
});
