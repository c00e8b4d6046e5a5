"""Extrapolation weights: from the last k computed outputs y_j at coordinates c_j to a target c*.

Every rule here returns weights w_j (most recent history entry first) so that the prediction is
    y(c*) ~= sum_j w_j * y_j.

* ``lagrange_weights`` -- w_j = prod_{l != j} (c* - c_l) / (c_j - c_l), exact for polynomials of degree
  k-1 on any grid (docs/DESIGN.md, "Extrapolation"). This is the rule the pack uses by default, with c = sigma for
  flow models and, for VP models, c = flow time sigma/(1 + sigma) in even mode and lambda = -log(sigma) in the
  paper's modes (CacheSettings.resolved).
* ``binomial_weights`` -- (-1)^(i+1) C(k, i), the AB-Cache paper's Prop. 2 for flow matching. It equals
  ``lagrange_weights`` only when the history is k consecutive, evenly spaced steps and the target is the
  next one.
* ``paper_weights`` -- Prop. 2 with the exponential factors e^(i h) of the VP/epsilon form (h = lambda step).
* ``least_squares_weights`` -- the value at c* of the degree-d polynomial fitted by least squares through
  m > d history points: exact for polynomials of degree <= d, and for m = d + 1 the Lagrange weights. Over
  long gaps a line fitted through 3 points extrapolates better than the exact line through the last 2: the
  fit averages out the step-to-step wobble that exact interpolation carries forward (docs/DESIGN.md).

All arithmetic is float64 on Python scalars: a handful of numbers per model call.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .params import MAX_ORDER


def binomial_weights(k: int) -> list[float]:
    """The paper's weights (-1)^(i+1) C(k, i), i = 1..k: (1), (2,-1), (3,-3,1), (4,-6,4,-1), (5,-10,10,-5,1)."""
    _check_order(k)
    return [float((-1) ** (i + 1) * math.comb(k, i)) for i in range(1, k + 1)]


def paper_weights(k: int, h: float = 0.0) -> list[float]:
    """Prop. 2 of the paper: eps_n = sum_i (-1)^(i+1) C(k,i) e^(i h) eps_(n-i).

    ``h`` is the (uniform) lambda step; h = 0 is the flow-matching form (no exponential factors).
    The weights sum to 1 - (1 - e^h)^k, so for h != 0 they do not reproduce a constant.
    """
    return [w * math.exp((i + 1) * h) for i, w in enumerate(binomial_weights(k))]


def lagrange_weights(coords: Sequence[float], target: float) -> list[float]:
    """Lagrange extrapolation weights on arbitrary (distinct) coordinates.

    ``coords[j]`` is the coordinate of history entry j; the result has the same order. Raises
    ``ValueError`` for repeated coordinates (the caller keeps them distinct).
    """
    c = [float(v) for v in coords]
    k = len(c)
    if k == 0:
        raise ValueError("lagrange_weights needs at least one history entry")
    t = float(target)
    w = []
    for j in range(k):
        num, den = 1.0, 1.0
        for m in range(k):
            if m != j:
                num *= t - c[m]
                den *= c[j] - c[m]
        if den == 0.0:
            raise ValueError(f"repeated coordinate {c[j]!r} in history {c!r}")
        w.append(num / den)
    return w


def least_squares_weights(coords: Sequence[float], target: float, degree: int) -> list[float]:
    """Weights w with sum_j w_j y_j = p(target), p the least-squares polynomial of ``degree`` through
    (coords[j], y_j); the same order as ``coords``. Needs len(coords) > degree distinct coordinates.

    w = e_0^T (V^T V)^-1 V^T with V_ji = u_j^i, u_j = (c_j - target) / scale: the fit is written around the
    target (so p(target) is the constant coefficient) and scaled to [-1, 1] for conditioning.
    """
    c = [float(v) for v in coords]
    d = int(degree)
    if d < 0 or len(c) <= d:
        raise ValueError(f"a degree-{d} fit needs more than {d} points, got {len(c)}")
    if len(set(c)) < len(c):
        raise ValueError(f"repeated coordinate in history {c!r}")
    if len(c) == d + 1:
        return lagrange_weights(c, target)
    t = float(target)
    scale = max(abs(v - t) for v in c) or 1.0
    u = torch.tensor([(v - t) / scale for v in c], dtype=torch.float64)
    vander = torch.stack([u ** i for i in range(d + 1)], dim=1)            # (m, d + 1)
    w = torch.linalg.pinv(vander)[0]                                        # first row of (V^T V)^-1 V^T
    return [float(x) for x in w]


def amplification(weights: Sequence[float]) -> float:
    """sum |w_j|: how much the rule amplifies noise in the history (1 for plain reuse)."""
    return float(sum(abs(w) for w in weights))


def _check_order(k: int) -> None:
    if not (isinstance(k, int) and 1 <= k <= MAX_ORDER):
        raise ValueError(f"order must be an integer from 1 to {MAX_ORDER}, got {k!r}")
