"""The training dataset: the val scan (same files, same corrupt-file handling) plus YOLOv5's augmentations."""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from sparseyolo.data.augment import letterbox
from sparseyolo.data.dataset import PathLike, Shapes, ValDataset, _xyxy2xywhn_clipped
from sparseyolo.train.augment import AugmentConfig, augment_hsv, mosaic4, random_affine
from sparseyolo.utils.boxes import xywhn2xyxy

__all__ = ["TrainDataset", "create_train_dataloader"]

LOGGER = logging.getLogger(__name__)


class TrainDataset(ValDataset):
    """Labelled images for training, augmented as YOLOv5's ``LoadImagesAndLabels(augment=True)``.

    Scanning is :class:`~sparseyolo.data.dataset.ValDataset`'s (corrupt images or label files are reported
    with a warning and skipped; ``n_corrupt`` counts them), without rectangular batches: every item is a square
    ``img_size`` image.

    Per item, with probability ``aug.mosaic``: a 4-image mosaic (this image and 3 random others) warped by a
    random affine back to ``img_size``; otherwise this image letterboxed to ``img_size`` (enlarging allowed)
    then randomly warped. Then HSV jitter and flips. With ``augment=False`` only the letterbox is applied.

    Items are ``(img uint8 Tensor[3, S, S] RGB, labels Tensor[n, 6] (0, cls, cx, cy, w, h normalised), im_file,
    shapes)`` so :meth:`ValDataset.collate_fn` batches them; ``shapes`` is None for mosaics.

    Args:
        path: images (folder, list file, or a list of those).
        img_size: square training size (a multiple of the model stride).
        aug: augmentation strengths; ``AugmentConfig(mosaic=0)`` disables mosaic.
        augment: False turns every augmentation off (deterministic letterbox).
        stride: the model's largest stride.
        single_cls: train as one class.
        prefix: prepended to log lines.
    """

    def __init__(
        self,
        path: PathLike | Sequence[PathLike],
        img_size: int = 640,
        aug: AugmentConfig | None = None,
        augment: bool = True,
        stride: int = 32,
        single_cls: bool = False,
        prefix: str = "",
    ) -> None:
        super().__init__(path, img_size, batch_size=1, stride=stride, rect=False, single_cls=single_cls, prefix=prefix)
        self.aug = aug or AugmentConfig()
        self.augment = augment

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image ``i`` (BGR) resized to long side ``img_size``; bilinear when augmenting (as YOLOv5 trains)."""
        f = self.im_files[i]
        im = cv2.imread(f)
        if im is None:
            raise FileNotFoundError(f"cv2 could not read image {f} (it passed the PIL check; is the format supported?)")
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def _load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.img_size
        idx = [index] + random.choices(range(len(self)), k=3)
        random.shuffle(idx)
        images = [self.load_image(i)[0] for i in idx]
        centre = (int(random.uniform(s // 2, 2 * s - s // 2)), int(random.uniform(s // 2, 2 * s - s // 2)))
        img, labels = mosaic4(images, [self.labels[i] for i in idx], s, centre)
        return random_affine(img, labels, self.aug, border=(-(s // 2), -(s // 2)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Shapes | None]:
        index = int(index)
        shapes: Shapes | None = None
        if self.augment and random.random() < self.aug.mosaic:
            img, labels = self._load_mosaic(index)
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            img, ratio, pad = letterbox(img, self.img_size, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            labels = self.labels[index].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                img, labels = random_affine(img, labels, self.aug)

        nl = len(labels)
        if nl:
            labels[:, 1:5] = _xyxy2xywhn_clipped(labels[:, 1:5], w=img.shape[1], h=img.shape[0], eps=1e-3)
        if self.augment:
            augment_hsv(img, self.aug.hsv_h, self.aug.hsv_s, self.aug.hsv_v)
            if random.random() < self.aug.flipud:
                img = np.flipud(img)
                if nl:
                    labels[:, 2] = 1 - labels[:, 2]
            if random.random() < self.aug.fliplr:
                img = np.fliplr(img)
                if nl:
                    labels[:, 1] = 1 - labels[:, 1]

        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds Python's `random` and torch per worker; numpy too, for any numpy draw downstream.
    np.random.seed(torch.initial_seed() % 2**32)


def create_train_dataloader(
    path: PathLike | Sequence[PathLike],
    img_size: int,
    batch_size: int,
    stride: int,
    aug: AugmentConfig | None = None,
    augment: bool = True,
    workers: int = 8,
    rank: int = -1,
    world_size: int = 1,
    seed: int = 0,
    single_cls: bool = False,
    prefix: str = "",
) -> tuple[DataLoader, TrainDataset]:
    """A shuffled DataLoader over a :class:`TrainDataset`.

    Args:
        batch_size: images per batch on this process (the global batch divided by the world size).
        rank, world_size: with ``rank >= 0`` and ``world_size > 1``, a ``DistributedSampler`` gives each rank a
            disjoint shard; call ``loader.sampler.set_epoch(epoch)`` every epoch (the engine does).
        seed: shuffling seed (identical on all ranks).
        workers: upper bound on loader workers; the count follows YOLOv5's rule (CPUs per rank, batch size).

    Returns:
        ``(loader, dataset)``.
    """
    dataset = TrainDataset(path, img_size, aug, augment, stride, single_cls=single_cls, prefix=prefix)
    batch_size = min(batch_size, len(dataset))
    ranks = max(world_size, 1)
    nw = min((os.cpu_count() or 1) // ranks, batch_size if batch_size > 1 else 0, workers)
    if rank >= 0 and world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=nw,
        pin_memory=torch.cuda.is_available(),
        collate_fn=ValDataset.collate_fn,
        worker_init_fn=_seed_worker,
        persistent_workers=nw > 0,
        drop_last=False,
    )
    return loader, dataset
