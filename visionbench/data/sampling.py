"""Which record goes to which device in which step: pure functions of
(dataset size, shard, batch size, epoch, seed).

A worker with ``n_local`` devices owns shards ``local_index + n_local * rank``
of ``n_local * n_workers`` shards. Every epoch all shards cut one permutation
of the dataset into contiguous, disjoint slices whose union is the dataset;
each shard pads its slice (by repeating its own first records) to the same
number of full batches, and reports how many samples of each batch are
padding. The permutation depends only on (seed, epoch), so the shards agree
on it without talking, and an epoch can be replayed exactly on resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import AbstractSet

import numpy as np


def shard_bounds(num_items: int, num_shards: int, shard_id: int) -> tuple[int, int]:
    """[start, end) of shard ``shard_id``: sizes differ by at most one."""
    return num_items * shard_id // num_shards, num_items * (shard_id + 1) // num_shards


def smallest_shard(num_items: int, num_shards: int) -> int:
    return num_items // num_shards


def batches_per_epoch(num_items: int, num_shards: int, batch_size: int) -> int:
    """Batches every shard yields per epoch (the largest shard, rounded up)."""
    return math.ceil(math.ceil(num_items / num_shards) / batch_size)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (DALI takes non-negative int32 seeds)."""
    entropy = [p % 2**32 for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


def epoch_order(num_items: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """Dataset positions in the order of this epoch (the same on every shard)."""
    if not shuffle:
        return np.arange(num_items, dtype=np.int64)
    return np.random.default_rng(derive_seed(seed, epoch)).permutation(num_items)


@dataclass(frozen=True)
class ShardEpoch:
    """One shard's epoch: ``positions[b]`` are the dataset positions of batch
    ``b``; its last ``pads[b]`` samples repeat earlier ones and are not data."""
    positions: np.ndarray   # (batches, batch_size) int64
    pads: np.ndarray        # (batches,) int64

    @property
    def valid(self) -> int:
        return int(self.positions.size - self.pads.sum())

    def from_step(self, step: int) -> "ShardEpoch":
        """The epoch's batches from ``step`` on (a resume or restart inside it)."""
        return replace(self, positions=self.positions[step:], pads=self.pads[step:]) if step else self


def shard_epoch(order: np.ndarray, num_shards: int, shard_id: int, batch_size: int) -> ShardEpoch:
    start, end = shard_bounds(len(order), num_shards, shard_id)
    mine = order[start:end]
    if len(mine) < batch_size:
        raise ValueError(f"shard {shard_id} of {num_shards} holds {len(mine)} images, "
                         f"fewer than the batch size {batch_size}")
    batches = batches_per_epoch(len(order), num_shards, batch_size)
    ends = np.arange(1, batches + 1) * batch_size
    pads = np.clip(ends - len(mine), 0, batch_size)
    return ShardEpoch(np.resize(mine, batches * batch_size).reshape(batches, batch_size), pads)


def leave_out(positions: np.ndarray, pad: int, left_out: AbstractSet[int], filler: int) -> tuple[np.ndarray, int, int]:
    """One batch without the positions in ``left_out`` (records that failed
    to decode, under --bad-records skip): ``(positions, pad, dropped)``. The
    batch keeps its size; its remaining data comes first and padding that
    repeats it follows, so a dropped record counts as padding, not as data.
    ``filler`` (a good position of the shard) pads a batch left with no data."""
    data = positions[:len(positions) - pad]
    kept = [int(p) for p in data if int(p) not in left_out]
    dropped = len(data) - len(kept)
    if not dropped and not any(int(p) in left_out for p in positions[len(data):]):
        return positions, pad, 0
    batch = np.resize(np.asarray(kept or [filler], dtype=np.int64), len(positions))
    return batch, len(positions) - len(kept), dropped


def rect_crop_shape(aspect: float, size: int) -> tuple[int, int]:
    """(height, width) of a rectangular val crop for width/height ``aspect``:
    the short side is ``size``, the long side the aspect-scaled length rounded
    down to a multiple of 8 (never below ``size``)."""
    if aspect >= 1:
        return size, max(size, int(size * aspect) // 8 * 8)
    return max(size, int(size / aspect) // 8 * 8), size


@dataclass(frozen=True)
class RectEpoch(ShardEpoch):
    """A rect-val shard: ``crops[b]`` is the (height, width) of batch ``b``."""
    crops: np.ndarray = None   # (batches, 2) int64

    def from_step(self, step: int) -> "RectEpoch":
        return replace(super().from_step(step), crops=self.crops[step:]) if step else self


def rect_val_epoch(widths_heights: np.ndarray, num_shards: int, shard_id: int,
                   batch_size: int, size: int) -> RectEpoch:
    """imagenet18's rectangular validation: records sorted by aspect ratio
    (stable, so ties keep file order), cut into shards and batches; each batch
    is cropped to the shape of its valid images' mean aspect ratio. A record
    of size (0, 0) is unreadable (--bad-records skip): it sorts as square and
    does not count towards its batch's shape."""
    readable = widths_heights[:, 1] > 0
    aspect = np.where(readable, widths_heights[:, 0] / np.maximum(widths_heights[:, 1], 1), 1.0)
    order = np.argsort(aspect, kind="stable")
    plain = shard_epoch(order, num_shards, shard_id, batch_size)
    crops = []
    for positions, pad in zip(plain.positions, plain.pads):
        # A batch that is all padding (a short shard's extra batch) takes its
        # shape from the repeated records.
        valid = positions[: batch_size - pad] if pad < batch_size else positions
        valid = valid[readable[valid]] if readable[valid].any() else valid
        crops.append(rect_crop_shape(float(aspect[valid].mean()), size))
    return RectEpoch(plain.positions, plain.pads, np.asarray(crops, dtype=np.int64))
