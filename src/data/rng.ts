import { DataError } from './errors.js';

const TWO_32 = 0x1_0000_0000;

/** Murmur3's 32-bit finaliser: a bijection that spreads every input bit over the output. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

function checkSeed(name: string, value: number): number {
  if (!Number.isSafeInteger(value)) {
    throw new DataError('BAD_ARGUMENT', `${name} must be an integer, got ${value}`);
  }
  return value >>> 0;
}

/**
 * Seeded PRNG: sfc32 (passes PractRand and BigCrush), state filled by splitmix32.
 * Only 32-bit integer arithmetic, so integer outputs are bit-identical on every platform;
 * normal() also goes through Math.log/cos/sqrt, which V8 computes the same way everywhere.
 */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d = 1;
  private spare: number | undefined;

  /** `stream` selects an independent sequence for the same seed (see derive()). */
  constructor(seed: number, stream = 0) {
    let s = checkSeed('seed', seed);
    const streamMix = mix32(checkSeed('stream', stream) ^ 0x5bd1e995);
    const splitmix = (): number => {
      s = (s + 0x9e3779b9) | 0;
      return mix32(s);
    };
    this.a = splitmix();
    this.b = splitmix() ^ streamMix;
    this.c = splitmix();
    // Warm up so that nearby seeds have decorrelated first outputs.
    for (let i = 0; i < 15; i++) this.nextU32();
  }

  /** An independent generator for (seed, stream): e.g. stream = epoch index. */
  static derive(seed: number, stream: number): Rng {
    return new Rng(seed, stream);
  }

  /** A new generator seeded from this one's output; advances this one. */
  fork(): Rng {
    return new Rng(this.nextU32(), this.nextU32());
  }

  nextU32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1), 32 bits of resolution. */
  next(): number {
    return this.nextU32() / TWO_32;
  }

  /** Uniform integer in [0, n), by rejection so that no value is favoured when n ∤ 2^32. */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > TWO_32) {
      throw new DataError('BAD_ARGUMENT', `n must be an integer in [1, 2^32], got ${n}`);
    }
    const limit = TWO_32 - (TWO_32 % n);
    let x = this.nextU32();
    while (x >= limit) x = this.nextU32();
    return x % n;
  }

  /** Standard normal by Box-Muller; the second value of each pair is kept for the next call. */
  normal(): number {
    if (this.spare !== undefined) {
      const z = this.spare;
      this.spare = undefined;
      return z;
    }
    const r = Math.sqrt(-2 * Math.log(1 - this.next())); // 1 - next() is in (0, 1]: no log(0)
    const theta = 2 * Math.PI * this.next();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** Fisher-Yates, in place; returns `array`. */
  shuffle<A extends { length: number; [i: number]: unknown }>(array: A): A {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = array[i];
      array[i] = array[j];
      array[j] = t;
    }
    return array;
  }

  /** A uniformly random permutation of 0..n-1. */
  permutation(n: number): Uint32Array {
    const p = new Uint32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }
}
