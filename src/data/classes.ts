/**
 * Labels are 0..NUM_CLASSES-1 and are written one-hot into the first NUM_CLASSES pixels of each
 * row; an evaluation overlays every label on every image, NUM_CLASSES rows per image.
 */
export const NUM_CLASSES = 10;
