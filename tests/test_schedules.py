import math

import pytest

from enstune.errors import ConfigError
from enstune.schedules import get_schedule, list_schedules


@pytest.mark.parametrize("name", list_schedules())
def test_warmup_rises_linearly_to_the_peak(name):
    f = get_schedule(name)
    assert [f(s, 100, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("name", list_schedules())
def test_every_factor_is_within_zero_and_one(name):
    f = get_schedule(name)
    assert all(0.0 <= f(s, 50, 5) <= 1.0 for s in range(50))


def test_cosine_boundaries():
    f = get_schedule("cosine")
    assert f(0, 10, 0) == 1.0
    assert f(5, 10, 0) == pytest.approx(0.5)
    assert f(10, 10, 0) == pytest.approx(0.0, abs=1e-12)
    assert f(9, 10, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    # after warm-up the decay starts from the peak
    assert f(3, 13, 3) == 1.0 and f(13, 13, 3) == pytest.approx(0.0, abs=1e-12)


def test_cosine_decreases_monotonically():
    f = get_schedule("cosine")
    values = [f(s, 30, 0) for s in range(31)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_triangular_and_constant():
    tri, const = get_schedule("triangular"), get_schedule("constant")
    assert tri(0, 10, 0) == 1.0 and tri(5, 10, 0) == pytest.approx(0.01) and tri(10, 10, 0) == 1.0
    assert const(7, 10, 0) == 1.0


def test_unknown_schedule():
    with pytest.raises(ConfigError, match="unknown schedule 'saw'"):
        get_schedule("saw")


def test_fge_climbs_from_the_minimum_to_the_peak_and_back_ending_at_the_minimum():
    f = get_schedule("fge")
    values = [f(s, 8, 0) for s in range(8)]
    assert values[-1] == pytest.approx(0.01), "the member is taken at the minimum"
    assert max(values) == values[3] == pytest.approx(1.0), "the peak at mid-cycle"
    assert all(a < b for a, b in zip(values[:4], values[1:4])) and all(a > b for a, b in zip(values[3:], values[4:]))
    assert values[0] - 0.01 == pytest.approx(values[3] - values[4]), "one step up from the parent's minimum"
    # FGE's triangle (peak, 1%, peak) shifted by half a cycle: consecutive jobs are one periodic wave
    tri = get_schedule("triangular")
    assert values == pytest.approx([tri((s + 1 + 4) % 8, 8, 0) for s in range(8)])
    assert f(0, 1, 0) == pytest.approx(0.01) and f(10, 10, 0) == pytest.approx(0.01), "never below the minimum"
