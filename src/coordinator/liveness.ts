// Whether the stages of a run are alive and getting on with it, judged from the coordinator's
// side: two clocks per layer and one rule over them, in the spirit of the ZeroMQ guide's
// Paranoid Pirate.
//
// - Silence: how long since the layer's stage was last heard from (a heartbeat or a result).
//   Its heartbeats come from a thread of their own, so silence means the process is gone, frozen
//   or cut off, never that a step is long. The timeout grows by twice the longest silence the
//   stage showed while healthy, so a slow or congested link is not taken for a lost stage.
// - Progress: how long the layer has had work outstanding (a message it must answer: a train or
//   eval batch, a weights marker) without answering. A stage that heartbeats but answers nothing
//   is stuck: a stalled link, or a stage that dropped what it was sent.
//
// The rule (verdict): a silent stage is lost; otherwise the first layer from upstream whose
// progress clock has run past its timeout is stalled (the ones after it starve, and are not to
// blame). Nothing here sends, listens or keeps a timer: the cluster asks when its watchdog ticks.

export interface LivenessTimeouts {
  /** A stage silent for this long (plus twice its longest healthy silence) is lost. */
  heartbeatTimeoutMs: number;
  /** A layer with work outstanding and no answer for this long is stalled. */
  progressTimeoutMs: number;
}

export type Verdict =
  | { kind: 'lost'; layer: number; silentMs: number }
  | { kind: 'stalled'; layer: number; waitedMs: number };

interface SilenceClock {
  lastSeen: number;
  /** The longest silence seen from the stage while it was healthy. */
  longestGap: number;
}

export class Liveness {
  private readonly silence = new Map<number, SilenceClock>();
  /** Layers whose stage was found stalled in this attempt. */
  private readonly stuck = new Set<number>();
  /** When each message every layer answers went out, in order. */
  private sentAt: number[] = [];
  /** Per layer: answers so far, and when the last came. */
  private readonly answers: number[];
  private readonly lastAnswer: number[];

  constructor(
    private readonly numLayers: number,
    private readonly timeouts: LivenessTimeouts,
    private readonly now: () => number = Date.now,
  ) {
    this.answers = new Array<number>(numLayers).fill(0);
    this.lastAnswer = new Array<number>(numLayers).fill(0);
  }

  // -- silence ---------------------------------------------------------------------------------

  /** A stage registered for `layer` (a first one or a replacement): its clock starts now. */
  joined(layer: number): void {
    this.silence.set(layer, { lastSeen: this.now(), longestGap: 0 });
  }

  /** The stage of `layer` is forgotten (a replacement may join). */
  left(layer: number): void {
    this.silence.delete(layer);
    this.stuck.delete(layer);
  }

  /** The stage of `layer` was found stalled (a verdict acted on). */
  stalled(layer: number): void {
    this.stuck.add(layer);
  }

  /** Whether the stage of `layer` was lost or stalled: the next attempt does without it. */
  failedThisAttempt(layer: number): boolean {
    return this.isSilent(layer) || this.stuck.has(layer);
  }

  /** A sign of life from the stage of `layer`. */
  heard(layer: number): void {
    const c = this.silence.get(layer);
    if (!c) return;
    const now = this.now();
    if (!this.isSilent(layer)) c.longestGap = Math.max(c.longestGap, now - c.lastSeen);
    c.lastSeen = now;
  }

  /** How long the stage of `layer` has been silent (ms; NaN for a layer without a stage). */
  silenceMs(layer: number): number {
    const c = this.silence.get(layer);
    return c ? this.now() - c.lastSeen : NaN;
  }

  /** Whether the stage of `layer` has been silent for too long: lost. */
  isSilent(layer: number): boolean {
    const c = this.silence.get(layer);
    if (!c) return false;
    return this.now() - c.lastSeen > this.timeouts.heartbeatTimeoutMs + 2 * c.longestGap;
  }

  // -- progress --------------------------------------------------------------------------------

  /** A new attempt: nothing is outstanding, and no stage is stalled. */
  resetProgress(): void {
    this.stuck.clear();
    this.sentAt = [];
    this.answers.fill(0);
    this.lastAnswer.fill(0);
  }

  /** A message went out that every layer answers, in order. */
  sent(): void {
    this.sentAt.push(this.now());
  }

  /** The stage of `layer` answered the oldest message it had not answered. */
  answered(layer: number): void {
    this.answers[layer - 1]! += 1;
    this.lastAnswer[layer - 1] = this.now();
  }

  /** How long `layer` has had work outstanding without answering (ms; 0 with none). */
  progressMs(layer: number): number {
    const oldest = this.sentAt[this.answers[layer - 1]!];
    if (oldest === undefined) return 0;
    return this.now() - Math.max(oldest, this.lastAnswer[layer - 1]!);
  }

  // -- the rule --------------------------------------------------------------------------------

  /** Lost (any silent stage) before stalled (the first from upstream); null when all is well. */
  verdict(): Verdict | null {
    for (const layer of [...this.silence.keys()].sort((a, b) => a - b)) {
      if (this.isSilent(layer)) return { kind: 'lost', layer, silentMs: this.silenceMs(layer) };
    }
    for (let layer = 1; layer <= this.numLayers; layer++) {
      const waitedMs = this.progressMs(layer);
      if (waitedMs > this.timeouts.progressTimeoutMs) return { kind: 'stalled', layer, waitedMs };
    }
    return null;
  }
}
