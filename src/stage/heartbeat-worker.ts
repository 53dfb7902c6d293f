// The stage's heartbeat, on a thread of its own (heartbeat.ts starts it). A stage's main thread
// is busy for as long as a step takes, and a step of a wide layer on a CPU can outlast any
// heartbeat timeout; here, heartbeats go out every interval whatever the main thread is doing,
// so the coordinator's "no heartbeat" means the process is gone or frozen, never that it is
// slow. What the coordinator answers is passed on to the main thread.
import { parentPort, workerData } from 'node:worker_threads';
import { Dealer } from 'zeromq';
import { HEARTBEAT_MAX_BYTES } from '../transport/bounds.js';
import { curveClient } from '../transport/curve.js';
import { decodeControl, encodeControl } from '../transport/wire.js';
import type { HeartbeatNews, HeartbeatSettings } from './heartbeat.js';

const settings = workerData as HeartbeatSettings;
const socket = new Dealer({
  linger: 0,
  sendHighWaterMark: 16,
  maxMessageSize: HEARTBEAT_MAX_BYTES,
});
if (settings.security) {
  curveClient(socket, settings.security.keys, settings.security.coordinatorKey);
}
socket.connect(settings.coordinator);
const beat = encodeControl({ type: 'heartbeat', layer: settings.layer, token: settings.token });
const post = (news: HeartbeatNews) => parentPort!.postMessage(news);

let timer: NodeJS.Timeout | undefined;
let sending = false;

/**
 * One heartbeat, unless the last one still waits for room: with the coordinator gone the queue
 * fills (16), and ZeroMQ allows one send in progress per socket (a second would throw from the
 * native side and abort the process).
 */
function beatOnce(): void {
  if (sending) return;
  sending = true;
  socket.send(beat).then(
    () => (sending = false),
    () => (sending = false),
  );
}

parentPort!.on('message', (m: 'start' | 'close') => {
  if (m === 'start' && !timer) {
    timer = setInterval(beatOnce, settings.intervalMs);
    beatOnce();
  } else if (m === 'close') {
    clearInterval(timer);
    socket.close();
  }
});

for (;;) {
  let frame: Buffer | undefined;
  try {
    [frame] = await socket.receive();
  } catch {
    break; // closed: the thread ends once its port does
  }
  try {
    const msg = decodeControl(frame!);
    if (msg.type === 'heartbeat') post({ heard: true });
    else if (msg.type === 'error') post({ heard: true, error: { run: msg.run, code: msg.code } });
  } catch {
    // Not from a coordinator of ours: nothing to pass on.
  }
}
parentPort!.close();
