#!/usr/bin/env node
// ffx-keys: the CurveZMQ keys of a cluster: one key pair for the coordinator and one per stage
// (files readable by their owner only), and trusted.pub, the public keys every process gets.
//   ffx-keys keys --stages 2     -> keys/coordinator.key, keys/stage-1.key, keys/stage-2.key,
//                                   keys/trusted.pub
//   ffx-keys keys --partition 1-2,3 -> keys/stage-1-2.key, keys/stage-3.key, ... (stages of groups)
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../errors.js';
import { onePerLayer, parsePartition } from '../config/partition.js';
import { stageKeyName, writeClusterKeys } from '../transport/curve.js';
import type { LayerRange } from '../transport/layer-range.js';
import { runMain } from './run-main.js';
import { hideBin, yargs } from './yargs.js';

async function main(): Promise<void> {
  const a = await yargs(hideBin(process.argv))
    .scriptName('ffx-keys')
    .usage('$0 DIR --stages N | --partition SPEC')
    .usage(
      'Make the CurveZMQ keys of a cluster: DIR/coordinator.key, DIR/stage-1.key .. stage-N.key ' +
        '(or one per stage of a --partition: stage-1-2.key, ...; mode 0600, one to each process ' +
        'with --key) and DIR/trusted.pub (to every process, --trust).',
    )
    .positional('dir', { type: 'string', describe: 'directory for the keys (created, mode 0700)' })
    .option('stages', {
      type: 'number',
      describe: 'how many stage keys (one per layer: stage-N may serve layer N only)',
    })
    .option('partition', {
      type: 'string',
      describe:
        "one key per stage of this layout (as ffx-launch --partition takes it, e.g. 1-2,3-4: stage-1-2 may serve layers 1-2 only); a stage's replicas share its key",
    })
    .conflicts('stages', 'partition')
    .option('force', { type: 'boolean', default: false, describe: 'replace existing keys' })
    .demandCommand(1, 'name the directory: ffx-keys DIR --stages N')
    .strict()
    .fail((msg, err) => {
      throw err ?? new UsageError(msg);
    })
    .help()
    .parseAsync();
  const dir = String(a._[0]);
  let stages: LayerRange[];
  if (a.partition !== undefined) {
    stages = parsePartition(a.partition).map((s) => s.layers);
  } else if (a.stages === undefined) {
    throw new UsageError('give --stages N (one key per layer) or --partition SPEC');
  } else if (!Number.isInteger(a.stages) || a.stages < 1) {
    throw new UsageError(`--stages must be a positive integer; got ${a.stages}`);
  } else {
    stages = onePerLayer(a.stages).map((s) => s.layers);
  }
  const names = ['coordinator', ...stages.map(stageKeyName)];
  const existing = names.filter((n) => existsSync(join(dir, `${n}.key`)));
  if (existing.length > 0 && !a.force) {
    throw new UsageError(`${dir} already holds ${existing.join(', ')}: --force to replace them`);
  }
  const trusted = await writeClusterKeys(dir, stages);
  process.stdout.write(
    `wrote ${names.map((n) => `${n}.key`).join(', ')} and trusted.pub in ${dir}\n` +
      `coordinator: --key ${join(dir, 'coordinator.key')} --trust ${trusted}\n` +
      `stage of layers L: --key ${join(dir, 'stage-L.key')} --trust ${trusted} (L as in its --layer)\n`,
  );
}

runMain(main);
