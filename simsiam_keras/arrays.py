"""A decoded-array source: images already in memory, views made on the accelerator.

For a run without TensorFlow (the JAX or PyTorch backend on a GPU whose image has no
TensorFlow) or for data small enough to hold decoded (CIFAR-10's training split is 150 MB as
uint8): `ArrayViews` feeds shuffled batches of whole uint8 images, and
`device_augment.ViewAugment(crop_size=...)` inside the train step draws each view's
RandomResizedCrop and the rest of the recipe there. Imports no TensorFlow.

    model = sk.SimSiam(backbone, augment=sk.ViewAugment(blur=False, crop_size=32), ...)
    model.fit(ArrayViews(images, batch_size=512, seed=0), epochs=800)
"""

import keras
import numpy as np


class ArrayViews(keras.utils.PyDataset):
    """Batches `((x, x),)` of whole images, in a new random order every epoch.

    Both views are the same batch: the model's `augment` layer (a `ViewAugment` with
    `crop_size`) makes them two views. The last incomplete batch is dropped, as pretraining's
    pipeline does (a full batch for BatchNorm and the kNN monitor's batch count).

    Args:
        images: `[N, H, W, C]` array of one image size (uint8 in [0, 255], or float in [0, 1]).
        batch_size: images per batch.
        seed: seed of the shuffling (epoch e uses `seed + e`).
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, `use_multiprocessing`).
    """

    def __init__(self, images, batch_size, seed=0, **kwargs):
        super().__init__(**kwargs)
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"`images` must be [N, H, W, C]. Received shape {images.shape}.")
        if not 0 < batch_size <= len(images):
            raise ValueError(
                f"`batch_size` must be in [1, {len(images)}] (the number of images). "
                f"Received: {batch_size}."
            )
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.epoch = 0
        self._order = self._shuffled()

    def _shuffled(self):
        return np.random.default_rng(self.seed + self.epoch).permutation(len(self.images))

    def __len__(self):
        return len(self.images) // self.batch_size

    def __getitem__(self, index):
        rows = np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])
        batch = self.images[rows]
        return ((batch, batch),)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._shuffled()
