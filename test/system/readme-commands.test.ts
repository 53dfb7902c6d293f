// The README's commands run as written, from a copy of the repository the way a clone has it:
// every command in its ```sh blocks is either run here or listed below with why not (so a new
// one must be classified). The multi-host commands run on this host, with two substitutions
// only: loopback for 0.0.0.0 and the hosts' addresses, and free ports for 5555 and 6000.
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { freePort } from '../../src/transport/sockets.js';
import {
  killAll,
  ROOT,
  startCommand,
  waitForOutput,
  type RunResult,
  type Started,
} from '../helpers/spawn.js';
import { tempDir } from '../helpers/temp-dir.js';

/** Commands not run here, by how they start, and why. */
const NOT_HERE: [RegExp, string][] = [
  [/^npm install$/, 'this test runs in the installed tree; CI runs npm ci on a clean clone'],
  [/^(npm test|npm run (test:unit|build|typecheck|lint)|\.ci\/run)$/, 'CI runs these itself'],
  [/^sudo apt-get install /, 'needs root and the network; .ci/run installs the packages'],
  [/^npm run train:fashion/, 'minutes of training on the full dataset (README, Results)'],
  [/^npm run bench/, 'benchmarks: minutes, and their figures are timings'],
  [
    /^npx ffx-coordinator plan /,
    'its figures are timings of this machine; pipeline-layouts.test.ts runs plan and --stages',
  ],
  [
    /^(export GRAFANA_ADMIN_PASSWORD=|docker compose )/,
    'needs Docker; deploy.test.ts checks the compose files',
  ],
  [/^curl .*localhost:3000\/render\//, "needs the compose stack's Grafana"],
];

/** Every command of the README's sh blocks: continuations joined, comments dropped. */
function readmeCommands(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
  return blocks
    .flatMap((b) => b.replace(/\\\n\s*/g, '').split('\n'))
    .map((l) => l.replace(/\s+#\s.*$/, '').trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

describe("the README's commands, as written, from a fresh copy", () => {
  after(killAll);
  const tmp = tempDir('readme');
  const commands = readmeCommands();
  const run = commands.filter((c) => !NOT_HERE.some(([re]) => re.test(c)));

  it('every command is run here or said why not', () => {
    assert.ok(commands.length > 15, `only ${commands.length} commands found`);
    const known = [
      /^npm run demo$/,
      /^npx ffx-keys keys --stages 2$/,
      /^npx ffx-coordinator train --config config\/demo\.json --bind tcp:\/\/0\.0\.0\.0:5555 /,
      /^N=1 COORDINATOR=\S+ NODE=\S+$/,
      /^npx ffx-stage --layer \$N --coordinator tcp:\/\/\$COORDINATOR:5555 /,
      /^npx ffx-coordinator eval --bind tcp:\/\/0\.0\.0\.0:5555 /,
      /^npx ffx-coordinator report runs\/demo$/,
    ];
    for (const c of run)
      assert.ok(
        known.some((re) => re.test(c)),
        `unclassified: ${c}`,
      );
    for (const re of known)
      assert.ok(
        run.some((c) => re.test(c)),
        `the README lacks ${re}`,
      );
  });

  it('they run: the demo, keys, a keyed coordinator and two stages, eval, report', async (t) => {
    // The repository as a clone has it after npm install: sources copied (the build writes
    // into the copy), node_modules and the datasets linked.
    const dir = tmp('clone');
    for (const f of [
      'package.json',
      'tsconfig.json',
      'scripts',
      'src',
      'test',
      'bench',
      'config',
    ]) {
      cpSync(join(ROOT, f), join(dir, f), { recursive: true });
    }
    for (const f of ['node_modules', 'data', 'native']) symlinkSync(join(ROOT, f), join(dir, f));
    const started: Started[] = [];
    const shell = (line: string, env: NodeJS.ProcessEnv = {}, timeoutMs = 180_000) => {
      const s = startCommand('bash', ['-c', line], { cwd: dir, env, timeoutMs });
      started.push(s);
      return s;
    };
    const ok = async (s: Started, what: string): Promise<RunResult> => {
      const r = await s.result;
      assert.equal(r.code, 0, `${what}: ${r.stderr.slice(-3000)}`);
      return r;
    };
    const find = (re: RegExp) => run.find((c) => re.test(c))!;
    try {
      await ok(shell(find(/^npm run demo$/)), 'npm run demo');
      assert.ok(existsSync(join(dir, 'runs', 'demo', 'model.safetensors')));

      await ok(shell(find(/^npx ffx-keys/)), 'ffx-keys');
      for (const f of ['coordinator.key', 'stage-1.key', 'stage-2.key', 'trusted.pub']) {
        assert.ok(existsSync(join(dir, 'keys', f)), f);
      }

      // This host for every host, free ports for the fixed ones.
      const control = await freePort();
      const here = (c: string, data = 0) =>
        c
          .replaceAll('0.0.0.0', '127.0.0.1')
          .replaceAll(':5555', `:${control}`)
          .replaceAll(':6000', `:${data}`);
      const coordinator = shell(here(find(/^npx ffx-coordinator train/)));
      const hosts = find(/^N=1 COORDINATOR=/);
      t.diagnostic(`for "${hosts}": N=1 and N=2, COORDINATOR=NODE=127.0.0.1`);
      const stages = [];
      for (const n of [1, 2]) {
        stages.push(
          shell(here(find(/^npx ffx-stage/), await freePort()), {
            N: String(n),
            COORDINATOR: '127.0.0.1',
            NODE: '127.0.0.1',
          }),
        );
      }
      const trained = await ok(coordinator, 'the keyed coordinator');
      // runs/demo holds the demo's run: this one goes beside it.
      assert.match(trained.stdout, /weights: runs\/demo-2\/model\.safetensors/);
      for (const s of stages)
        await waitForOutput(s.stderr, /waiting for the next coordinator/, 30_000);

      const evaluated = await ok(shell(here(find(/^npx ffx-coordinator eval/))), 'eval');
      assert.match(evaluated.stderr, /no --config: evaluating what the stages hold, 784-500-500/);
      assert.match(evaluated.stdout, /^test accuracy \d+\.\d+%/m);

      const report = await ok(shell(find(/^npx ffx-coordinator report/)), 'report');
      assert.match(report.stdout, /^report: runs\/demo\/report\.html$/m);
    } finally {
      for (const s of started) s.killGroup('SIGKILL');
    }
  });
});
