// The coordinator's liveness rule on a hand-driven clock: when a stage is lost (silence past the
// heartbeat timeout plus twice its longest healthy silence), when a layer is stalled (work
// outstanding and no answer past the progress timeout), and which verdict comes first.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Liveness } from '../../src/coordinator/liveness.js';

function clocked(numLayers = 3, heartbeatTimeoutMs = 1000, progressTimeoutMs = 5000) {
  const clock = { t: 0 };
  const live = new Liveness(numLayers, { heartbeatTimeoutMs, progressTimeoutMs }, () => clock.t);
  return { clock, live };
}

describe('Liveness', () => {
  it('a stage is lost only once silent past the timeout plus twice its longest healthy gap', () => {
    const { clock, live } = clocked();
    live.joined(2);
    clock.t = 1000;
    assert.equal(live.isSilent(2), false, 'at the timeout exactly');
    clock.t = 1001;
    assert.equal(live.isSilent(2), true);
    assert.deepEqual(live.verdict(), { kind: 'lost', layer: 2, silentMs: 1001 });
    // Heard again: a gap of 1001 ms was not healthy (it was already silent), so the timeout
    // does not grow by it.
    live.heard(2);
    assert.equal(live.isSilent(2), false);
    clock.t += 1001;
    assert.equal(live.isSilent(2), true);
  });

  it('a slow but healthy link widens the timeout by twice its longest silence', () => {
    const { clock, live } = clocked();
    live.joined(1);
    clock.t = 800;
    live.heard(1); // a healthy gap of 800 ms: the timeout becomes 1000 + 1600
    clock.t = 800 + 2600;
    assert.equal(live.isSilent(1), false);
    clock.t += 1;
    assert.equal(live.isSilent(1), true);
    assert.equal(live.silenceMs(1), 2601);
  });

  it('a layer without a stage is neither silent nor lost; a stage that left is forgotten', () => {
    const { clock, live } = clocked();
    clock.t = 1e6;
    assert.equal(live.isSilent(3), false);
    assert.ok(Number.isNaN(live.silenceMs(3)));
    live.joined(3);
    clock.t += 5000;
    live.left(3);
    assert.equal(live.verdict(), null);
  });

  it('progress counts from the oldest unanswered message, or the last answer if later', () => {
    const { clock, live } = clocked(2);
    live.sent(); // t = 0
    clock.t = 100;
    live.sent(); // t = 100
    clock.t = 300;
    assert.equal(live.progressMs(1), 300, 'nothing answered: since the first message');
    live.answered(1); // first answered at 300; the second went at 100, so count from 300
    clock.t = 450;
    assert.equal(live.progressMs(1), 150);
    live.answered(1);
    assert.equal(live.progressMs(1), 0, 'all answered');
    assert.equal(live.progressMs(2), 450, 'layer 2 answered nothing');
    live.resetProgress();
    assert.equal(live.progressMs(2), 0, 'a new attempt has nothing outstanding');
  });

  it('the first stalled layer from upstream is blamed, and a lost stage before any stall', () => {
    const { clock, live } = clocked(3);
    for (const l of [1, 2, 3]) live.joined(l);
    live.sent();
    clock.t = 900;
    live.answered(1);
    for (const l of [1, 2, 3]) live.heard(l);
    clock.t = 5901;
    for (const l of [1, 2, 3]) live.heard(l);
    // Layer 1 answered at 900 and has nothing outstanding; 2 and 3 have waited 5901 ms.
    assert.deepEqual(live.verdict(), { kind: 'stalled', layer: 2, waitedMs: 5901 });
    clock.t += 1000 + 2 * 5001 + 1; // every stage silent as well now
    assert.equal(live.verdict()?.kind, 'lost');
    assert.equal(live.verdict()?.layer, 1);
  });

  it('a stage found lost or stalled is done with for the attempt; a new attempt forgets the stall', () => {
    const { clock, live } = clocked(2);
    live.joined(1);
    live.joined(2);
    live.stalled(2);
    assert.equal(live.failedThisAttempt(1), false);
    assert.equal(live.failedThisAttempt(2), true);
    live.resetProgress();
    assert.equal(live.failedThisAttempt(2), false);
    clock.t = 1001;
    assert.equal(live.failedThisAttempt(1), true, 'silent: lost');
  });
});
