"""Seeded random streams and the vectorized sampling the world is built from (numpy only)."""

from __future__ import annotations

import numpy as np


def stream(seed: int, *key: int) -> np.random.Generator:
    """The generator of one named stream of a world seed (e.g. catalog, users, chunk c)."""
    return np.random.default_rng([seed, *key])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def unique_ids(rng: np.random.Generator, n: int, span: int, start: int = 0) -> np.ndarray:
    """Increasing unique positive ids spread over about [start + 1, start + span] (like sampled
    raw ids)."""
    gaps = rng.integers(1, max(2, int(2 * span / max(n, 1))), size=n)
    return start + np.cumsum(gaps).astype(np.int64)


class Segments:
    """Weighted sampling inside groups: items of a category, ads of a category, or all ads."""

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int) -> None:
        self.order = np.argsort(group, kind="stable")
        counts = np.bincount(group, minlength=n_groups)
        self.start = np.concatenate([[0], np.cumsum(counts)])
        self.cum = np.concatenate([[0.0], np.cumsum(weight[self.order])])
        self.total = self.cum[self.start[1:]] - self.cum[self.start[:-1]]

    def sample(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.start[groups], self.start[groups + 1]
        target = self.cum[lo] + rng.random(groups.size) * self.total[groups]
        pos = np.searchsorted(self.cum, target, side="right") - 1
        return self.order[np.clip(pos, lo, hi - 1)]


def sample_rows(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws with replacement from each row of a row-stochastic matrix."""
    rows, cols = probs.shape
    cum = np.cumsum(probs, axis=1)
    cum /= cum[:, -1:]
    offset = np.arange(rows)[:, None]
    flat = (cum + offset).ravel()  # row r lives in (r, r + 1]: one sorted array for all rows
    u = rng.random((rows, n)) + offset
    idx = np.searchsorted(flat, u.ravel(), side="left").reshape(rows, n) - offset * cols
    return np.clip(idx, 0, cols - 1)
