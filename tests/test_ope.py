"""Off-policy estimators (train/ope.py) against values known exactly: a synthetic bandit whose
target value is computed in closed form, and a world day logged by a uniform slate policy."""

from __future__ import annotations

import numpy as np
import pytest

from etl.world import Decision, LoopConfig, SlateRequest, TaobaoWorld, WorldConfig
from train import ope

K, N_CONTEXTS = 6, 40


def _softmax(x: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((x - x.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def bandit() -> dict:
    """Contexts drawn uniformly from 40, 6 actions with Bernoulli rewards of known rates; a
    softmax logging policy on noisy scores and a sharper target policy on other scores."""
    rng = np.random.default_rng(0)
    rate = rng.uniform(0.01, 0.4, (N_CONTEXTS, K))
    logging = _softmax(rate + rng.normal(0, 0.1, rate.shape), 0.3)
    target = _softmax(rate + rng.normal(0, 0.05, rate.shape), 0.05)
    value = float((target * rate).sum(axis=1).mean())  # exact: contexts are uniform
    return {"rate": rate, "logging": logging, "target": target, "value": value}


def _log(bandit: dict, n: int, rng: np.random.Generator) -> dict:
    ctx = rng.integers(0, N_CONTEXTS, n)
    cum = bandit["logging"][ctx].cumsum(axis=1)
    slot = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), K - 1)
    reward = (rng.random(n) < bandit["rate"][ctx, slot]).astype(np.float64)
    return {"ctx": ctx, "slot": slot, "reward": reward, "p": bandit["logging"][ctx, slot]}


def _estimates(bandit: dict, logs: dict, model: np.ndarray) -> dict[str, ope.Estimate]:
    ctx = logs["ctx"]
    return ope.evaluate(
        logs["reward"], logs["p"], bandit["target"][ctx], model[ctx], logs["slot"]
    ) | {"dm": ope.direct_method((bandit["target"][ctx] * model[ctx]).sum(axis=1))}


def test_estimates_cover_the_exact_value(bandit: dict) -> None:
    rng = np.random.default_rng(1)
    logs = _log(bandit, 200_000, rng)
    noisy = np.clip(bandit["rate"] + rng.normal(0, 0.05, bandit["rate"].shape), 0, 1)
    est = _estimates(bandit, logs, noisy)
    v = bandit["value"]
    on_policy = float(logs["reward"].mean())
    assert abs(on_policy - v) > 0.02  # the logging policy's own value is far from the target's
    for name in ope.ESTIMATORS:
        e = est[name]
        assert abs(e.value - v) < 4 * e.stderr, (name, e, v)
        assert e.low < e.value < e.high and 0 < e.stderr < 0.01
        assert 0 < e.effective_n < e.n
    assert est["dr"].stderr < est["ips"].stderr  # a good reward model cuts the variance
    assert abs(est["dm"].value - v) > 4 * est["dm"].stderr  # the model alone is biased


def test_interval_coverage_and_robustness(bandit: dict) -> None:
    """Over 300 small logs: IPS and DR (even with a constant, wrong reward model) are unbiased
    and their 95% intervals cover the exact value about 95% of the time."""
    rng = np.random.default_rng(2)
    wrong = np.full(bandit["rate"].shape, 0.5)
    cover = {"ips": 0, "snips": 0, "dr": 0}
    values = {name: [] for name in cover}
    reps = 300
    for _ in range(reps):
        est = _estimates(bandit, _log(bandit, 3000, rng), wrong)
        for name in cover:
            values[name].append(est[name].value)
            cover[name] += est[name].low <= bandit["value"] <= est[name].high
    for name in ("ips", "dr"):
        v = np.array(values[name])
        assert abs(v.mean() - bandit["value"]) < 4 * v.std() / np.sqrt(reps), name
    for name, hits in cover.items():
        assert 0.88 <= hits / reps <= 0.99, (name, hits)


def test_on_policy_logs_give_the_mean_reward(bandit: dict) -> None:
    logs = _log(bandit, 5000, np.random.default_rng(3))
    est = ope.evaluate(
        logs["reward"],
        logs["p"],
        bandit["logging"][logs["ctx"]],
        np.zeros((5000, K)),
        logs["slot"],
    )
    for name in ope.ESTIMATORS:
        assert est[name].value == pytest.approx(logs["reward"].mean())
    assert est["ips"].effective_n == pytest.approx(5000)


def test_clipping_bounds_the_weights() -> None:
    w = ope.importance_weights(np.array([1.0, 0.5]), np.array([0.01, 0.5]), clip=10)
    np.testing.assert_allclose(w, [10.0, 1.0])


def test_bad_input_fails_clearly() -> None:
    one = np.ones(3)
    with pytest.raises(ValueError, match="propensities"):
        ope.ips(one, one, np.array([0.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match="length"):
        ope.snips(one, one, np.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        ope.ips(np.array([1.0, np.nan, 0.0]), one, one)
    with pytest.raises(ValueError, match="sum to 1"):
        ope.slate_terms(np.full((2, 3), 0.5), np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="level"):
        ope.ips(one, one, one, level=1.5)


class UniformSlot:
    def __call__(self, request: SlateRequest) -> Decision:
        k = request.k
        probs = np.full((request.size, k), 1.0 / k)
        return Decision(request.rng.integers(0, k, request.size), probs[:, 0], probs)


def test_world_logs_estimate_a_greedy_policys_clicks() -> None:
    """A world day logged by a uniform slate policy; target: greedy on the true p_click. Given
    the logged slates, the target's expected clicks per decision are known exactly from the
    world's truth (slates.csv's columns); IPS, SNIPS and DR (the truth with noise as the model)
    must find them."""
    world = TaobaoWorld(
        WorldConfig(users=150, seed=7, chunk_users=150, ads=300, items=900, cates=30),
        LoopConfig(record_slates=True),
    )
    imp = world.simulate_day(0, UniformSlot()).logs.impressions
    p_click = imp["slate_p_click"]
    n, k = p_click.shape
    target = np.zeros((n, k))
    target[np.arange(n), p_click.argmax(axis=1)] = 1.0
    exact = float((target * p_click).sum(axis=1).mean())
    model = p_click * np.random.default_rng(4).lognormal(0, 0.3, p_click.shape)
    est = ope.evaluate(imp["clk"], imp["propensity"], target, model, imp["slot"])
    assert exact > 2 * imp["clk"].mean()  # the greedy target clicks far more than uniform
    for name in ope.ESTIMATORS:
        assert abs(est[name].value - exact) < 4 * est[name].stderr, (name, est[name], exact)
    assert est["dr"].stderr < est["ips"].stderr
