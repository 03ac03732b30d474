"""McNemar's exact test and the paired change, against binomial tails worked out by hand."""
import pytest

from rlaif.stats import mcnemar_exact, paired_change


def test_mcnemar_exact_matches_the_binomial_tail():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # 8 wins, 0 losses: 2 * (1/2)^8
    assert mcnemar_exact(8, 0) == pytest.approx(2 / 256)
    assert mcnemar_exact(0, 8) == mcnemar_exact(8, 0)
    # 10 vs 2: 2 * (C(12,0)+C(12,1)+C(12,2)) / 2^12 = 2 * 79 / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(0.0385742, abs=1e-6)
    assert mcnemar_exact(34, 13) == pytest.approx(0.0031, abs=1e-4)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_change_counts_wins_and_losses_on_shared_questions_only():
    before = {"a": False, "b": False, "c": True, "d": True, "e": False}
    after = {"a": True, "b": True, "c": False, "d": True, "f": True}  # e unanswered after, f not before
    ch = paired_change(before, after)
    assert (ch["n"], ch["wins"], ch["losses"]) == (4, 2, 1)
    assert ch["before"] == pytest.approx(0.5) and ch["after"] == pytest.approx(0.75)
    assert ch["delta"] == pytest.approx(0.25) and ch["p"] == pytest.approx(1.0)
    assert ch["se"] == pytest.approx((((1 - 0.25) ** 2 * 2 + (-1 - 0.25) ** 2 + 0.25 ** 2) / 3 / 4) ** 0.5)
    assert paired_change({}, {})["p"] == 1.0
