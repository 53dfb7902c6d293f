// Every loss an FF layer can train on, by the name model.loss gives it (loss.ts says what each
// shape of loss returns).
import type { Loss } from './loss.js';
import { softmax } from './softmax.js';
import { symba } from './symba.js';
import { threshold } from './threshold.js';

export const LOSSES = {
  threshold: { kind: 'row', terms: threshold },
  symba: { kind: 'row', terms: symba },
  softmax: { kind: 'label', gradient: softmax },
} as const satisfies Record<string, Loss>;

export type LossType = keyof typeof LOSSES;
export const LOSS_TYPES = Object.keys(LOSSES) as readonly LossType[];
