"""What every run shares: its length (epochs or steps) and the learning-rate schedules over it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from rsgee.errors import RsgeeError
from rsgee.configs import DEFAULT_EPOCHS, check_length
from rsgee.train.trainer import lr_factor, planned_steps


def test_constant_linear_and_cosine_schedules():
    assert [lr_factor("constant", s, 10) for s in range(10)] == [1.0] * 10
    # pix2pix's linear decay: the base rate for the first half, then straight down towards 0
    assert [lr_factor("linear", s, 10) for s in range(10)] == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    cosine = [lr_factor("cosine", s, 10) for s in range(10)]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and cosine[9] == pytest.approx(
        0.5 * (1 + math.cos(0.9 * math.pi)))
    assert all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] > 0  # the last step still learns
    with pytest.raises(RsgeeError, match="--schedule 'step'"):
        lr_factor("step", 0, 10)


def test_warmup_ramps_linearly_then_the_schedule_runs_over_the_remaining_steps():
    factors = [lr_factor("cosine", s, 12, warmup=4) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([lr_factor("cosine", s, 8) for s in range(8)])
    assert [lr_factor("constant", s, 5, warmup=2) for s in range(5)] == [0.5, 1, 1, 1, 1]


def config(**values) -> SimpleNamespace:
    return SimpleNamespace(**{**dict(epochs=None, steps=None, schedule="cosine", warmup=0), **values})


def test_a_run_is_epochs_or_steps_long():
    default = config()
    check_length(default)
    assert default.epochs == DEFAULT_EPOCHS and default.steps is None
    assert planned_steps(default, 7) == DEFAULT_EPOCHS * 7
    stepped = config(steps=2000)
    check_length(stepped)
    assert stepped.epochs is None and planned_steps(stepped, 7) == 2000
    for bad, message in [(config(epochs=3, steps=5), "not both"), (config(steps=0), "--steps 0"),
                         (config(schedule="exp"), "--schedule 'exp'"), (config(warmup=-1), "--warmup -1")]:
        with pytest.raises(RsgeeError, match=message) as error:
            check_length(bad)
        assert "\n" not in str(error.value)
