"""The sampler: disjoint, covering shards; padding reported; rect-val shapes."""
import numpy as np
from hypothesis import assume, given, strategies as st

from visionbench.data.sampling import (batches_per_epoch, epoch_order, leave_out, rect_crop_shape,
                                       rect_val_epoch, shard_epoch)


@given(n=st.integers(1, 400), shards=st.integers(1, 8), batch=st.integers(1, 32),
       epoch=st.integers(0, 5), seed=st.integers(-5, 5), shuffle=st.booleans())
def test_shards_partition_every_epoch(n, shards, batch, epoch, seed, shuffle):
    assume(n // shards >= batch)   # else refused by the loader (batch larger than a shard)
    order = epoch_order(n, epoch, seed, shuffle)
    seen = []
    for shard in range(shards):
        plan = shard_epoch(order, shards, shard, batch)
        assert plan.positions.shape == (batches_per_epoch(n, shards, batch), batch)
        for positions, pad in zip(plan.positions, plan.pads):
            seen.extend(positions[: batch - pad])
            # padding only ever trails and repeats this shard's own records
            assert set(positions[batch - pad:]) <= set(plan.positions.ravel()[: plan.valid])
    assert sorted(seen) == list(range(n))


def test_order_depends_on_seed_and_epoch_only():
    a, b = epoch_order(100, 3, 7, True), epoch_order(100, 3, 7, True)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, epoch_order(100, 4, 7, True))
    assert not np.array_equal(a, epoch_order(100, 3, 8, True))
    assert np.array_equal(epoch_order(5, 9, 1, False), np.arange(5))


@given(aspect=st.floats(0.2, 5.0), size=st.sampled_from([8, 64, 128, 224, 288]))
def test_rect_crop_shape(aspect, size):
    height, width = rect_crop_shape(aspect, size)
    assert min(height, width) == size and height % 8 == 0 and width % 8 == 0
    long_side = max(height, width)
    ideal = size * (aspect if aspect >= 1 else 1 / aspect)
    assert long_side <= max(size, ideal) and (long_side > ideal - 8 or long_side == size)


def test_rect_val_batches_sorted_by_aspect_and_shaped_by_their_mean():
    rng = np.random.default_rng(0)
    sizes = np.stack([rng.integers(50, 200, 37), rng.integers(50, 200, 37)], axis=1)
    aspect = sizes[:, 0] / sizes[:, 1]
    covered = []
    for shard in range(2):
        plan = rect_val_epoch(sizes, 2, shard, 5, 64)
        valid = np.concatenate([p[: 5 - pad] for p, pad in zip(plan.positions, plan.pads)])
        assert np.all(np.diff(aspect[valid]) >= 0)
        covered.extend(valid)
        for positions, pad, crop in zip(plan.positions, plan.pads, plan.crops):
            mean = aspect[positions[: 5 - pad]].mean() if pad < 5 else aspect[positions].mean()
            assert tuple(crop) == rect_crop_shape(mean, 64)
    assert sorted(covered) == list(range(37))


@given(st.integers(1, 9).flatmap(lambda size: st.tuples(
    st.just(size), st.integers(0, size), st.sets(st.integers(0, 30), max_size=12))))
def test_leave_out_keeps_the_batch_size_and_turns_left_out_records_into_padding(case):
    size, pad, left_out = case
    positions = np.arange(size, dtype=np.int64) * 3   # data first, then `pad` repeats of it
    if pad:
        positions[size - pad:] = positions[0]
    filler = 99
    batch, new_pad, dropped = leave_out(positions, pad, left_out, filler)
    data = [int(p) for p in positions[:size - pad]]
    kept = [p for p in data if p not in left_out]
    assert len(batch) == size and dropped == len(data) - len(kept) and new_pad == size - len(kept)
    assert batch[:len(kept)].tolist() == kept                         # the data, in its order
    assert not set(batch.tolist()) & left_out                         # nothing left out is fed
    # Padding repeats the data (the filler when none is left), or is the batch's own padding.
    assert set(batch[len(kept):].tolist()) <= set(kept) | {filler} | set(positions[size - pad:].tolist())
