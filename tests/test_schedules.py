"""Schedules and phases at their boundaries (pure functions, no MXNet)."""
import math

import pytest

from visionbench.cli import UsageError
from visionbench.phases import DataSettings, parse_phases
from visionbench.schedules import CosineSchedule, OneCycleSchedule, PolySchedule, StepSchedule

IMAGENET18 = ("[{'ep': 0, 'sz': 128, 'bs': 512, 'trndir': '-sz/160'}, {'ep': (0, 7), 'lr': (1.0, 2.0)}, "
              "{'ep': (7, 13), 'lr': (2.0, 0.25)}, {'ep': 13, 'sz': 224, 'bs': 224, 'trndir': '-sz/320', "
              "'min_scale': 0.087}, {'ep': (13, 22), 'lr': (0.4375, 0.043750000000000004)}, "
              "{'ep': (22, 25), 'lr': (0.043750000000000004, 0.004375)}, {'ep': 25, 'sz': 288, 'bs': 128, "
              "'min_scale': 0.5, 'rect_val': True}, {'ep': (25, 28), 'lr': (0.0025, 0.00025)}]")


def test_step_recipe_boundaries():
    base = 0.1 * 8 * 208 / 256   # --lr 0.1 per 256 images, 8 devices x 208
    schedule = StepSchedule(base_lr=base, epochs=90)
    n = 100   # iterations per epoch
    assert schedule.at(0, 0, n)[0] == pytest.approx(base / (5 * n))
    assert schedule.at(2, 49, n)[0] == pytest.approx(base * 2.5 / 5)
    assert schedule.at(4, 99, n)[0] == pytest.approx(base)        # warmup ends exactly at epoch 5
    assert schedule.at(5, 0, n)[0] == pytest.approx(base)
    assert schedule.at(29, 99, n)[0] == pytest.approx(base)
    assert schedule.at(30, 0, n)[0] == pytest.approx(base * 0.1)
    assert schedule.at(59, 99, n)[0] == pytest.approx(base * 0.1)
    assert schedule.at(60, 0, n)[0] == pytest.approx(base * 0.01)
    assert schedule.at(80, 0, n)[0] == pytest.approx(base * 0.001)
    assert schedule.at(89, 99, n) == pytest.approx((base * 0.001, 0.9))
    no_warmup = StepSchedule(base_lr=base, epochs=90, warmup_epochs=0)
    assert no_warmup.at(0, 0, n)[0] == pytest.approx(base)


def test_poly_boundaries_against_hand_computed_values():
    # MLPerf-style: base 10.0, warmup 2 epochs, 10 epochs of 4 iterations, end 1e-4, power 2
    schedule = PolySchedule(base_lr=10.0, epochs=10, warmup_epochs=2, end_lr=1e-4, power=2.0, momentum=0.9)
    assert schedule.at(0, 0, 4) == pytest.approx((10.0 * 0.25 / 2, 0.9))    # a quarter epoch into 2 of warmup
    assert schedule.at(1, 3, 4)[0] == pytest.approx(10.0)                   # the end of the warmup: the peak
    # t = 2.25 epochs past the warmup's end of 8: 1e-4 + (10 - 1e-4) * (1 - 0.25 / 8) ** 2
    assert schedule.at(2, 0, 4)[0] == pytest.approx(1e-4 + (10 - 1e-4) * (31 / 32) ** 2)
    assert schedule.at(5, 3, 4)[0] == pytest.approx(1e-4 + (10 - 1e-4) * 0.25)   # halfway: (1/2)^2
    assert schedule.at(9, 3, 4)[0] == pytest.approx(1e-4)                   # the last iteration ends at end_lr
    linear = PolySchedule(base_lr=1.0, epochs=4, warmup_epochs=0, end_lr=0.0, power=1.0)
    assert [linear.at(e, 0, 1)[0] for e in range(4)] == pytest.approx([0.75, 0.5, 0.25, 0.0])


def test_cosine_ends_at_zero():
    schedule = CosineSchedule(base_lr=1.0, epochs=10, warmup_epochs=2)
    assert schedule.at(1, 9, 10)[0] == pytest.approx(1.0)
    assert schedule.at(5, 9, 10)[0] == pytest.approx(0.5)       # halfway through 2..10
    assert schedule.at(9, 9, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert CosineSchedule(base_lr=1.0, epochs=4, warmup_epochs=0).at(0, 0, 1)[0] == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)))


def test_one_cycle_matches_onecyclelr_semantics():
    # OneCycleLR(max_lr=2, total_steps=100, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    schedule = OneCycleSchedule(max_lr=2.0, epochs=10)
    n = 10
    assert schedule.at(0, 0, n) == pytest.approx((2.0 / 25, 0.95))
    assert schedule.at(2, 9, n) == pytest.approx((2.0, 0.85))      # step 29 = 0.3 * 100 - 1
    assert schedule.at(9, 9, n) == pytest.approx((2.0 / 25 / 1e4, 0.95))
    lr, momentum = schedule.at(1, 4, n)   # step 14, fraction 14/29 of the rise
    rise = 14 / 29
    assert lr == pytest.approx(2.0 + (2.0 / 25 - 2.0) / 2 * (1 + math.cos(math.pi * rise)))
    assert momentum == pytest.approx(0.85 + 0.1 / 2 * (1 + math.cos(math.pi * rise)))


def test_imagenet18_phases():
    phases = parse_phases(IMAGENET18)
    assert phases.epochs == 28
    n = 10
    assert phases.at(0, 0, n)[0] == pytest.approx(1.0)
    assert phases.at(3, 5, n)[0] == pytest.approx(1.0 + 3.5 / 7)
    assert phases.at(7, 0, n)[0] == pytest.approx(2.0)
    assert phases.at(12, 9, n)[0] == pytest.approx(2.0 + (0.25 - 2.0) * 5.9 / 6)
    assert phases.at(13, 0, n)[0] == pytest.approx(0.4375)
    assert phases.at(22, 0, n)[0] == pytest.approx(0.04375)
    assert phases.at(25, 0, n)[0] == pytest.approx(0.0025)
    assert phases.at(27, 9, n)[0] == pytest.approx(0.0025 + (0.00025 - 0.0025) * 2.9 / 3)
    defaults = DataSettings(image_size=224, batch_size=256, trndir="", min_scale=0.08, rect_val=False)
    assert phases.settings(12, defaults) == DataSettings(128, 512, "-sz/160", 0.08, False)
    assert phases.settings(13, defaults) == DataSettings(224, 224, "-sz/320", 0.087, False)
    assert phases.settings(24, defaults) == DataSettings(224, 224, "-sz/320", 0.087, False)
    assert phases.settings(25, defaults) == DataSettings(288, 128, "", 0.5, True)


@pytest.mark.parametrize("text, words", [
    ("[{'ep': 0, 'sz': 128", "not a Python literal"),
    ("__import__('os').system('true')", "not a Python literal"),
    ("[{'ep': (0, 5), 'lr': (1, 2)}, {'ep': 2, 'sz': 'big'}]", "phase 1 ({'ep': 2, 'sz': 'big'}): 'sz' must be int"),
    ("[{'ep': (0, 5), 'lr': 1, 'foo': 3}]", "phase 0 ({'ep': (0, 5), 'lr': 1, 'foo': 3}): unknown key 'foo'"),
    ("[{'ep': (0, 5), 'lr': 1}, {'ep': (7, 9), 'lr': 1}]", "leave epochs 5..6 without an LR"),
    ("[{'ep': (1, 5), 'lr': 1}]", "leave epochs 0..0 without an LR"),
    ("[{'ep': 0, 'sz': 64}]", "no LR phase"),
    ("[{'ep': (0, 5), 'lr': (1, 2, 3)}]", "'lr' must be a number or (start, end)"),
    ("[{'ep': (0, 5), 'lr': 1}, {'ep': 6, 'sz': 64}]", "after the last LR phase ends (5)"),
])
def test_malformed_phases_name_the_phase_and_key(text, words):
    with pytest.raises(UsageError) as caught:
        parse_phases(text)
    assert words in str(caught.value)
