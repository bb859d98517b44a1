"""Ranking policies: beta = 0 is greedy, propensities are exact, draws are seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.policy import (
    POLICIES,
    EpsilonGreedy,
    Greedy,
    Incentive,
    IncentiveMult,
    Slate,
    Softmax,
    Uniform,
    make_policy,
    ranking_score,
)


def random_slate(rng: np.random.Generator, k: int = 30) -> Slate:
    return Slate(rng.uniform(0, 0.05, k), rng.poisson(2.0, k).astype(float), rng.uniform(0, 1, k))


def test_ranking_score() -> None:
    out = {"pctcvr": torch.tensor([0.1, 0.2]), "expected_views": torch.tensor([3.0, 0.0])}
    assert torch.equal(ranking_score(out, 0.0), out["pctcvr"])
    torch.testing.assert_close(ranking_score(out, 0.1), torch.tensor([0.4, 0.2]))


def test_beta_zero_is_exactly_greedy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        slate = random_slate(rng)
        greedy, zero = Greedy().choose(slate), Incentive(0.0).choose(slate)
        assert np.array_equal(greedy.ranking, zero.ranking)
        assert greedy.chosen == int(np.argmax(slate.pctcvr)) and greedy.propensity == 1.0
        assert np.array_equal(IncentiveMult(0.0).choose(slate).ranking, greedy.ranking)


def test_incentive_rewards_further_views() -> None:
    slate = Slate(np.array([0.030, 0.020]), np.array([0.0, 5.0]))
    assert Greedy().choose(slate).chosen == 0
    assert Incentive(0.01).choose(slate).chosen == 1  # 0.02 + 0.05 > 0.03
    assert IncentiveMult(0.2).choose(slate).chosen == 1  # 0.02 * 2 > 0.03
    assert list(Incentive(0.01).choose(slate).ranking) == [1, 0]


def test_ties_go_to_the_lower_index() -> None:
    slate = Slate(np.array([0.1, 0.3, 0.3, 0.2]), np.zeros(4))
    assert list(Greedy().choose(slate).ranking) == [1, 2, 3, 0]


@pytest.mark.parametrize(
    "policy", [EpsilonGreedy(0.2), EpsilonGreedy(0.3, beta=0.01), Softmax(0.01), Uniform()]
)
def test_stochastic_propensities_are_exact(policy) -> None:
    rng = np.random.default_rng(1)
    slate = random_slate(rng, k=8)
    probs = policy.probabilities(slate)
    assert probs.sum() == pytest.approx(1.0) and (probs >= 0).all()
    draws = 40_000
    picks = [policy.choose(slate, np.random.default_rng(s)) for s in range(draws)]
    counts = np.bincount([p.chosen for p in picks], minlength=slate.size)
    # every choice reports the probability it was drawn with
    assert all(p.propensity == pytest.approx(probs[p.chosen]) for p in picks[:500])
    # empirical frequencies within 4.5 binomial standard deviations of the stated ones
    sd = np.sqrt(draws * probs * (1 - probs))
    assert (np.abs(counts - draws * probs) <= 4.5 * sd + 1).all(), (counts, draws * probs)


def test_epsilon_and_softmax_limits() -> None:
    slate = random_slate(np.random.default_rng(2), k=10)
    best = int(np.argmax(slate.pctcvr))
    eps = EpsilonGreedy(0.1).probabilities(slate)
    assert eps[best] == pytest.approx(0.9 + 0.01) and eps.min() == pytest.approx(0.01)
    assert EpsilonGreedy(0.0).choose(slate).propensity == 1.0
    cold = Softmax(1e-6).probabilities(slate)
    assert cold[best] == pytest.approx(1.0)
    hot = Softmax(1e6).probabilities(slate)
    np.testing.assert_allclose(hot, np.full(10, 0.1), rtol=1e-4)


def test_draws_are_seeded() -> None:
    slate = random_slate(np.random.default_rng(3))
    a = [Softmax(0.01).choose(slate, np.random.default_rng(7)).chosen for _ in range(5)]
    b = [Softmax(0.01).choose(slate, np.random.default_rng(7)).chosen for _ in range(5)]
    assert a == b
    with pytest.raises(ValueError, match="stochastic"):
        Uniform().choose(slate)


def test_oracle_ranks_by_truth() -> None:
    slate = Slate(np.array([0.9, 0.1, 0.5]), np.zeros(3), truth=np.array([0.1, 0.7, 0.3]))
    assert list(make_policy("oracle").choose(slate).ranking) == [1, 2, 0]
    with pytest.raises(ValueError, match="truth"):
        make_policy("oracle").choose(Slate(np.array([0.1]), np.zeros(1)))


def test_make_policy_specs() -> None:
    assert make_policy("incentive:0.25") == Incentive(0.25)
    assert make_policy("incentive") == Incentive()  # the default beta
    assert make_policy("softmax:0.1") == Softmax(0.1)
    assert set(POLICIES) == {
        "greedy", "incentive", "incentive_mult", "epsilon_greedy", "softmax", "uniform", "oracle"
    }  # fmt: skip
    for bad, message in [
        ("nope", "unknown policy"),
        ("incentive:x", "not a number"),
        ("incentive:-1", "beta must be >= 0"),
        ("epsilon_greedy:1.5", "epsilon must be in"),
        ("softmax:0", "temperature must be > 0"),
        ("uniform:3", "takes no parameter"),
        ("greedy:0.5", "greedy takes no beta"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_policy(bad)
    with pytest.raises(ValueError, match="empty slate"):
        Slate(np.zeros(0), np.zeros(0))
