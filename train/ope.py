"""Off-policy evaluation: a target policy's value from another policy's logs (numpy only).

Logs of n decisions give, per decision i, the reward ``r_i`` of the shown action ``a_i``
(e.g. a purchase), its logging propensity ``p_i = pi_0(a_i | x_i)`` and the target policy's
probability of the same action ``q_i = pi(a_i | x_i)`` (the target policy scored on the logged
slate). The estimators of the target's value per decision, ``V = E_x[sum_a pi(a|x) R(x, a)]``:

- ``ips``: mean of ``w_i r_i`` with ``w_i = q_i / p_i`` (unbiased when ``p_i > 0`` wherever
  ``q_i > 0``; optional weight clipping trades bias for variance);
- ``snips``: ``sum(w_i r_i) / sum(w_i)`` (self-normalized: bounded by the rewards' range,
  slightly biased, much lower variance when weights are heavy);
- ``doubly_robust``: a reward model ``R_hat`` as the direct method, corrected by the importance
  weighted residual: mean of ``dm_i + w_i (r_i - R_hat(x_i, a_i))`` with
  ``dm_i = sum_a pi(a | x_i) R_hat(x_i, a)`` (unbiased if either the propensities or the model
  are right; lower variance the better the model).

Each returns an ``Estimate``: the value, its standard error (the per-decision terms' standard
deviation over sqrt(n); the delta method for snips), a normal confidence interval and the
effective sample size of the weights. ``slate_terms`` turns ``[n, K]`` slate arrays (target
probabilities, reward model) and the logged slots into the inputs above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    """One off-policy estimate with its uncertainty."""

    value: float
    stderr: float
    low: float
    high: float
    n: int
    effective_n: float  # (sum w)^2 / sum w^2: how many logged decisions the estimate rests on

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = out[0].shape
    if len(n) != 1 or n[0] == 0:
        raise ValueError("off-policy evaluation needs non-empty 1-d arrays")
    if any(a.shape != n for a in out):
        raise ValueError("off-policy arrays differ in length")
    if not all(np.isfinite(a).all() for a in out):
        raise ValueError("off-policy arrays hold NaN or infinite values")
    return out


def importance_weights(
    target_prob: np.ndarray, logging_prob: np.ndarray, clip: float | None = None
) -> np.ndarray:
    """``pi(a_i | x_i) / pi_0(a_i | x_i)``, optionally clipped at ``clip``."""
    q, p = _arrays(target_prob, logging_prob)
    if (p <= 0).any() or (p > 1 + 1e-9).any():
        raise ValueError("logging propensities must be in (0, 1]")
    if (q < 0).any() or (q > 1 + 1e-9).any():
        raise ValueError("target probabilities must be in [0, 1]")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    w = q / p
    return w if clip is None else np.minimum(w, clip)


def _estimate(
    terms: np.ndarray, w: np.ndarray, level: float, value: float | None = None
) -> Estimate:
    n = terms.size
    v = float(terms.mean()) if value is None else value
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    z = float(stats.norm.ppf(0.5 + level / 2))
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w > 0).any() else 0.0
    return Estimate(v, se, v - z * se, v + z * se, n, ess)


def _level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return level


def ips(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    clip: float | None = None,
    level: float = 0.95,
) -> Estimate:
    """Inverse propensity scoring: mean of w_i r_i."""
    (r,) = _arrays(reward)
    w = importance_weights(target_prob, logging_prob, clip)
    _arrays(r, w)
    return _estimate(w * r, w, _level(level))


def snips(
    reward: np.ndarray, target_prob: np.ndarray, logging_prob: np.ndarray, level: float = 0.95
) -> Estimate:
    """Self-normalized IPS: sum w_i r_i / sum w_i; standard error by the delta method."""
    (r,) = _arrays(reward)
    w = importance_weights(target_prob, logging_prob)
    _arrays(r, w)
    if w.sum() <= 0:
        raise ValueError("snips: the target policy gives zero probability to every logged action")
    value = float((w * r).sum() / w.sum())
    terms = w * (r - value) / w.mean()  # influence terms: mean 0, variance of the estimate x n
    return _estimate(terms, w, _level(level), value)


def doubly_robust(
    reward: np.ndarray,
    target_prob: np.ndarray,
    logging_prob: np.ndarray,
    reward_hat: np.ndarray,
    direct: np.ndarray,
    clip: float | None = None,
    level: float = 0.95,
) -> Estimate:
    """Doubly robust: mean of direct_i + w_i (r_i - reward_hat_i), where ``reward_hat_i`` is
    the reward model at the logged action and ``direct_i`` its mean under the target policy
    (``slate_terms`` computes both from slates)."""
    r, r_hat, dm = _arrays(reward, reward_hat, direct)
    w = importance_weights(target_prob, logging_prob, clip)
    _arrays(r, w)
    return _estimate(dm + w * (r - r_hat), w, _level(level))


def direct_method(direct: np.ndarray, level: float = 0.95) -> Estimate:
    """The reward model alone: mean of direct_i (biased by the model's errors)."""
    (dm,) = _arrays(direct)
    return _estimate(dm, np.ones_like(dm), _level(level))


def slate_terms(
    target_probs: np.ndarray, reward_model: np.ndarray, logged_slot: np.ndarray
) -> dict[str, np.ndarray]:
    """From ``[n, K]`` target probabilities and reward-model predictions and the logged slots:
    ``target_prob`` (pi(a_i | x_i)), ``reward_hat`` (R_hat(x_i, a_i)) and ``direct``
    (sum_a pi(a | x_i) R_hat(x_i, a))."""
    probs = np.asarray(target_probs, dtype=np.float64)
    model = np.asarray(reward_model, dtype=np.float64)
    slot = np.asarray(logged_slot)
    if probs.ndim != 2 or probs.shape != model.shape or slot.shape != probs.shape[:1]:
        raise ValueError("slate_terms needs [n, K] probabilities and model, and n slots")
    if (
        not np.issubdtype(slot.dtype, np.integer)
        or (slot < 0).any()
        or (slot >= probs.shape[1]).any()
    ):
        raise ValueError("logged slots must be integers in [0, K)")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("each row of target probabilities must sum to 1")
    rows = np.arange(slot.size)
    return {
        "target_prob": probs[rows, slot],
        "reward_hat": model[rows, slot],
        "direct": (probs * model).sum(axis=1),
    }


def evaluate(
    reward: np.ndarray,
    logging_prob: np.ndarray,
    target_probs: np.ndarray,
    reward_model: np.ndarray,
    logged_slot: np.ndarray,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """IPS, SNIPS and DR (the reward model as the direct method) of one target policy from
    slate logs: the shown slot, its logging propensity and its reward per decision."""
    t = slate_terms(target_probs, reward_model, logged_slot)
    q = t["target_prob"]
    return {
        "ips": ips(reward, q, logging_prob, level=level),
        "snips": snips(reward, q, logging_prob, level=level),
        "dr": doubly_robust(reward, q, logging_prob, t["reward_hat"], t["direct"], level=level),
    }
