import { NUM_CLASSES } from './classes.js';
import type { DatasetName } from './datasets.js';

const FASHION = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
];

/** Human-readable class names, for confusion matrices. */
export function classNames(dataset: DatasetName): readonly string[] {
  return dataset === 'mnist' ? Array.from({ length: NUM_CLASSES }, (_, i) => String(i)) : FASHION;
}
