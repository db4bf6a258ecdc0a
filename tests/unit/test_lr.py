"""Learning-rate schedules are pure functions of progress."""

import pytest

from advtrain.optim.lr import (
    ConstantParams,
    CosineParams,
    CyclicParams,
    MultiStepParams,
    constant,
    cosine,
    cyclic,
    multistep,
)


def test_multistep_drops_at_milestones_and_warms_up():
    f = multistep(MultiStepParams(milestones=[2, 4], gamma=0.1))
    assert [f(e, 6) for e in (0, 1.9, 2, 3.5, 4, 5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = multistep(MultiStepParams(milestones=[10], warmup_epochs=5))
    assert warm(2.5, 20) == pytest.approx(0.5)
    assert warm(6, 20) == pytest.approx(1.0)


def test_cosine_and_cyclic_shapes():
    cos = cosine(CosineParams())
    assert cos(0, 10) == pytest.approx(1.0)
    assert cos(5, 10) == pytest.approx(0.5)
    assert cos(10, 10) == pytest.approx(0.0)
    cyc = cyclic(CyclicParams(peak=0.5))
    assert [cyc(e, 10) for e in (0, 2.5, 5, 7.5, 10)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    assert constant(ConstantParams())(3, 10) == 1.0
