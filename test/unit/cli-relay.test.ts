// ffx-launch's terminal: children's lines tagged, and the coordinator's progress bar kept on
// the last row while other children print.
import assert from 'node:assert/strict';
import { PassThrough, Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { Terminal, relay } from '../../src/cli/relay.js';

function screen(): { out: Writable; written: () => string } {
  let text = '';
  const out = new Writable({
    write(chunk: Buffer, _enc, done) {
      text += chunk.toString();
      done();
    },
  });
  return { out, written: () => text };
}

describe('the launcher terminal', () => {
  it('tags lines, keeps the bar on the last row, and drops it when the child clears it', async () => {
    const { out, written } = screen();
    const terminal = new Terminal(out);
    const coordinator = new PassThrough();
    const stage = new PassThrough();
    relay(coordinator, terminal, '[coordinator]', 'coordinator: ');
    relay(stage, terminal, '[stage 1]', 'layer 1: ');
    coordinator.write('coordinator: model 784-10 on 1 stage\n');
    coordinator.write('\repoch 1/1 [=>   ] 1/4\x1b[K');
    await tick();
    coordinator.write('\repoch 1/1 [==> ');
    await tick();
    coordinator.write('  ] 2/4\x1b[K');
    stage.write('layer 1: a line while the bar is up\n');
    await tick();
    coordinator.write('\r\x1b[Kepoch 1/1 0.1s done\n');
    await tick();
    assert.equal(
      written(),
      '[coordinator] model 784-10 on 1 stage\n' +
        '\r[coordinator] epoch 1/1 [=>   ] 1/4\x1b[K' +
        '\r[coordinator] epoch 1/1 [==> \x1b[K' + // a redraw cut in two by the pipe
        '\r[coordinator] epoch 1/1 [==>   ] 2/4\x1b[K' +
        // The stage's line: the bar cleared, the line, the bar again below it.
        '\r\x1b[K[stage 1] a line while the bar is up\n[coordinator] epoch 1/1 [==>   ] 2/4' +
        // The child clears its bar and prints its epoch line: no bar any more.
        '\r\x1b[K[coordinator] epoch 1/1 0.1s done\n',
    );
  });
});
