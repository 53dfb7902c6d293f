// A stage's side of meeting a coordinator: it says hello now and every HELLO_INTERVAL_MS until
// a config arrives (giving up after a deadline, for the first coordinator only), and while it
// serves a run it watches that the coordinator is still there. The coordinator answers every
// heartbeat, so silence means it is gone: counted only on a second check in a row, since a long
// step can hold the first check up, and by the second the event loop has read what the
// coordinator sent meanwhile. The stage's heartbeats themselves go out from a thread of their
// own (heartbeat.ts).
import { HELLO_INTERVAL_MS } from '../transport/bounds.js';

export interface RegistrationSettings {
  /** How often the coordinator watch looks (the stage's heartbeat interval). */
  checkIntervalMs: number;
  /** Serving a run, a coordinator silent for this long is lost. */
  coordinatorTimeoutMs: number;
}

export interface RegistrationEvents {
  /** Sends one hello. */
  hello(): void;
  /** No config came within the deadline register() was given. */
  noConfig(timeoutMs: number): void;
  /** Whether the stage serves a run now (only then is the coordinator watched). */
  serving(): boolean;
  /** Serving a run, the coordinator has been silent for `silentMs`. */
  coordinatorLost(silentMs: number): void;
}

export class Registration {
  private helloTimer: NodeJS.Timeout | null = null;
  private deadline: NodeJS.Timeout | null = null;
  private readonly watch: NodeJS.Timeout;
  private lastHeard = Date.now();
  private silentOnce = false;

  constructor(
    private readonly settings: RegistrationSettings,
    private readonly events: RegistrationEvents,
  ) {
    this.watch = setInterval(() => this.checkCoordinator(), settings.checkIntervalMs);
  }

  /** Says hello now and every HELLO_INTERVAL_MS until stop(); gives up after `timeoutMs`. */
  register(timeoutMs: number): void {
    this.stop();
    this.events.hello();
    this.helloTimer = setInterval(() => this.events.hello(), HELLO_INTERVAL_MS);
    if (timeoutMs < Infinity) {
      this.deadline = setTimeout(() => this.events.noConfig(timeoutMs), timeoutMs);
    }
  }

  /** A config was taken (or the stage closes): no more hellos, no deadline. */
  stop(): void {
    if (this.helloTimer) clearInterval(this.helloTimer);
    if (this.deadline) clearTimeout(this.deadline);
    this.helloTimer = this.deadline = null;
  }

  /** The coordinator was heard from (any message, or a heartbeat's answer). */
  heard(): void {
    this.lastHeard = Date.now();
  }

  close(): void {
    this.stop();
    clearInterval(this.watch);
  }

  private checkCoordinator(): void {
    const silentMs = Date.now() - this.lastHeard;
    if (!this.events.serving() || silentMs <= this.settings.coordinatorTimeoutMs) {
      this.silentOnce = false;
      return;
    }
    if (!this.silentOnce) {
      this.silentOnce = true;
      return;
    }
    this.silentOnce = false;
    this.events.coordinatorLost(silentMs);
  }
}
