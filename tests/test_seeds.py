"""Seed discipline (qsmbench.seeds): disjoint reserved ranges, deterministic draws, clear errors."""

import pytest

from qsmbench import seeds


def test_ranges_are_disjoint_and_contiguous():
    spans = sorted(seeds.RANGES.values())
    assert spans[0][0] == 0
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 == lo2 and lo1 < hi1 < hi2


@pytest.mark.parametrize("seed, role", [(0, "test"), (999_999, "test"), (1_000_000, "train"),
                                        (1_999_999, "train"), (2_000_000, "tune"), (3_000_000, None)])
def test_role_of(seed, role):
    assert seeds.role_of(seed) == role


def test_check_role_accepts_and_rejects_with_the_reason():
    assert seeds.check_role(7, "test") == 7
    with pytest.raises(ValueError, match=r"datasets\.ph\.seed: 1500000 .*reserved for training"):
        seeds.check_role(1_500_000, "test", "datasets.ph.seed")
    with pytest.raises(ValueError, match="reserved for tuning"):
        seeds.check_role(2_000_001, "train")
    with pytest.raises(ValueError, match="outside every range"):
        seeds.check_role(5_000_000, "tune")
    with pytest.raises(ValueError, match="unknown seed role"):
        seeds.check_role(1, "validation")


def test_draw_is_deterministic_distinct_and_in_range():
    a = seeds.draw("train", 50, "uqsm")
    assert a == seeds.draw("train", 50, "uqsm")
    assert len(set(a)) == 50
    assert all(seeds.role_of(s) == "train" for s in a)
    assert a != seeds.draw("train", 50, "qsmnet")
    assert set(seeds.draw("tune", 20, "x")).isdisjoint(a)
    assert all(seeds.role_of(s) == "tune" for s in seeds.draw("tune", 20, "x"))
