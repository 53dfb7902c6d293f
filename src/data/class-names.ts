import { NUM_CLASSES } from './classes.js';
import type { DatasetName } from './dataset-types.js';

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

const CIFAR10 = [
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
];

/** Human-readable class names, for confusion matrices. */
export function classNames(dataset: DatasetName): readonly string[] {
  if (dataset === 'mnist') return Array.from({ length: NUM_CLASSES }, (_, i) => String(i));
  return dataset === 'cifar10' ? CIFAR10 : FASHION;
}
