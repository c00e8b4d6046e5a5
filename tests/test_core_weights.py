"""Extrapolation weights (abcache_core.weights): exactness, the paper's closed forms, convergence order.

Pure maths, no ComfyUI. References: docs/DESIGN.md; AB-Cache paper Prop. 2, Appendix A, Table 4.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from abcache_core import (
    MAX_ORDER,
    amplification,
    binomial_weights,
    lagrange_weights,
    paper_weights,
)
from abcache_core.weights import least_squares_weights

def adams_bashforth_coefficients(k: int) -> list[Fraction]:
    """Test oracle: b_j = integral_0^1 L_j(s) ds with L_j the Lagrange basis on s = 0, -1, ..., -(k-1) (Appendix A).

    k=2 -> (3/2, -1/2); k=3 -> (23/12, -4/3, 5/12); ... (Table 4). Exact rational arithmetic.
    """
    nodes = [Fraction(-m) for m in range(k)]
    out = []
    for j in range(k):
        # Polynomial L_j(s) as a coefficient list (lowest degree first), built by multiplying factors.
        poly = [Fraction(1)]
        for m in range(k):
            if m == j:
                continue
            den = nodes[j] - nodes[m]
            # multiply poly by (s - nodes[m]) / den
            new = [Fraction(0)] * (len(poly) + 1)
            for p, a in enumerate(poly):
                new[p + 1] += a / den
                new[p] += -nodes[m] * a / den
            poly = new
        out.append(sum(a / (p + 1) for p, a in enumerate(poly)))
    return out


ORDERS = range(1, MAX_ORDER + 1)
finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def grids(draw, min_sep=0.15):
    """k distinct, non-uniform nodes in [-3, 3] with a minimum separation, a target, polynomial coefficients."""
    k = draw(st.integers(1, MAX_ORDER))
    nodes = draw(st.lists(st.floats(-3.0, 3.0, **finite), min_size=k, max_size=k))
    s = sorted(nodes)
    assume(all(b - a >= min_sep for a, b in zip(s, s[1:])))
    target = draw(st.floats(-4.0, 4.0, **finite))
    coeffs = draw(st.lists(st.floats(-2.0, 2.0, **finite), min_size=k, max_size=k))
    return nodes, target, coeffs


def poly(coeffs, x):
    return sum(c * x**p for p, c in enumerate(coeffs))


# --------------------------------------------------------------------------- Lagrange: exactness
@settings(max_examples=300, deadline=None)
@given(grids())
def test_lagrange_sums_to_one_and_reproduces_polynomials(case):
    nodes, target, coeffs = case
    w = lagrange_weights(nodes, target)
    assert len(w) == len(nodes)
    scale = 1.0 + amplification(w)  # round-off grows with sum |w|
    assert math.isclose(sum(w), 1.0, rel_tol=0.0, abs_tol=1e-12 * scale)
    pred = sum(wj * poly(coeffs, c) for wj, c in zip(w, nodes))
    true = poly(coeffs, target)
    size = 1.0 + sum(abs(wj * poly(coeffs, c)) for wj, c in zip(w, nodes))
    assert abs(pred - true) <= 1e-11 * size, (nodes, target, coeffs, pred, true)


@settings(max_examples=100, deadline=None)
@given(grids())
def test_lagrange_is_not_exact_one_degree_higher(case):
    """Control: degree k is NOT reproduced in general (so the test above measures something)."""
    nodes, target, _ = case
    k = len(nodes)
    assume(min(abs(target - c) for c in nodes) > 0.1)
    w = lagrange_weights(nodes, target)
    pred = sum(wj * c**k for wj, c in zip(w, nodes))
    # error of interpolating x^k is exactly prod (target - c_j)
    expected_err = math.prod(target - c for c in nodes)
    size = 1.0 + sum(abs(wj * c**k) for wj, c in zip(w, nodes))
    assert math.isclose(target**k - pred, expected_err, rel_tol=1e-7, abs_tol=1e-12 * size)
    assert abs(expected_err) > 1e-6


# --------------------------------------------------------------------------- least squares: exactness, averaging
@st.composite
def fits(draw):
    """m distinct nodes (separated), a degree d < m, a target, degree-d polynomial coefficients."""
    m = draw(st.integers(2, MAX_ORDER))
    d = draw(st.integers(0, m - 1))
    nodes = draw(st.lists(st.floats(-3.0, 3.0, **finite), min_size=m, max_size=m))
    s = sorted(nodes)
    assume(all(b - a >= 0.15 for a, b in zip(s, s[1:])))
    target = draw(st.floats(-4.0, 4.0, **finite))
    coeffs = draw(st.lists(st.floats(-2.0, 2.0, **finite), min_size=d + 1, max_size=d + 1))
    return nodes, d, target, coeffs


@settings(max_examples=300, deadline=None)
@given(fits())
def test_least_squares_sums_to_one_and_is_exact_for_degree_d(case):
    nodes, d, target, coeffs = case
    w = least_squares_weights(nodes, target, d)
    assert len(w) == len(nodes)
    scale = 1.0 + amplification(w)
    assert math.isclose(sum(w), 1.0, rel_tol=0.0, abs_tol=1e-10 * scale)
    pred = sum(wj * poly(coeffs, c) for wj, c in zip(w, nodes))
    size = 1.0 + sum(abs(wj * poly(coeffs, c)) for wj, c in zip(w, nodes))
    assert abs(pred - poly(coeffs, target)) <= 1e-9 * size, (nodes, d, target, coeffs)


@settings(max_examples=100, deadline=None)
@given(fits())
def test_least_squares_with_d_plus_one_points_is_lagrange_and_more_points_differ(case):
    nodes, d, target, _ = case
    assert least_squares_weights(nodes[: d + 1], target, d) == pytest.approx(lagrange_weights(nodes[: d + 1], target))
    if len(nodes) > d + 1:
        assume(min(abs(target - c) for c in nodes) > 0.2)
        # the residual of a non-polynomial set of values is spread, not interpolated: differs from Lagrange
        w = least_squares_weights(nodes, target, d)
        lag = lagrange_weights(nodes[: d + 1], target)
        assert any(abs(a - b) > 1e-6 for a, b in zip(w, lag + [0.0] * (len(nodes) - d - 1)))


def test_least_squares_line_through_three_averages_the_wobble():
    """Values on a line plus an alternating wobble: the fitted line's extrapolation is closer than the exact line
    through the last two points (why the noise-space rule fits through three)."""
    nodes = [0.5, 0.6, 0.7]                     # most recent first: sigma falls
    wobble = [0.01, -0.01, 0.01]
    vals = [2.0 * c + 1.0 + e for c, e in zip(nodes, wobble)]
    target, true = 0.3, 2.0 * 0.3 + 1.0
    lsq = sum(w * v for w, v in zip(least_squares_weights(nodes, target, 1), vals))
    exact = sum(w * v for w, v in zip(lagrange_weights(nodes[:2], target), vals[:2]))
    assert abs(lsq - true) < 0.5 * abs(exact - true)


def test_least_squares_rejects_bad_fits():
    with pytest.raises(ValueError):
        least_squares_weights([0.5, 0.6], 0.3, 2)        # degree 2 needs 3 points
    with pytest.raises(ValueError):
        least_squares_weights([0.5, 0.5, 0.6], 0.3, 1)   # repeated node


def test_lagrange_target_on_a_node_is_one_hot():
    assert lagrange_weights([0.9, 0.5, 0.2], 0.5) == pytest.approx([0.0, 1.0, 0.0], abs=1e-15)


def test_lagrange_rejects_bad_histories():
    with pytest.raises(ValueError, match="at least one"):
        lagrange_weights([], 0.3)
    with pytest.raises(ValueError, match="repeated coordinate"):
        lagrange_weights([0.5, 0.4, 0.5], 0.3)


# --------------------------------------------------------------------------- uniform grid -> binomials
EXPECTED_BINOMIALS = {
    1: (1,),
    2: (2, -1),
    3: (3, -3, 1),
    4: (4, -6, 4, -1),
    5: (5, -10, 10, -5, 1),
}


@pytest.mark.parametrize("k", ORDERS)
def test_binomial_weights_table(k):
    assert binomial_weights(k) == list(map(float, EXPECTED_BINOMIALS[k]))
    assert amplification(binomial_weights(k)) == 2**k - 1


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(1, MAX_ORDER),
    start=st.floats(-5.0, 5.0, **finite),
    h=st.one_of(st.floats(-2.0, -0.01, **finite), st.floats(0.01, 2.0, **finite)),
)
def test_lagrange_on_uniform_grid_one_step_ahead_is_binomial(k, start, h):
    """History c* - j h (j = 1..k, most recent first), either direction, any affine placement."""
    target = start + k * h
    nodes = [target - j * h for j in range(1, k + 1)]
    w = lagrange_weights(nodes, target)
    assert w == pytest.approx(EXPECTED_BINOMIALS[k], rel=1e-9, abs=1e-9)
    assert w == pytest.approx(binomial_weights(k), rel=1e-9, abs=1e-9)


def test_binomial_is_wrong_on_non_uniform_grid():
    """The paper's constant weights differ from the exact ones when spacing varies."""
    w = lagrange_weights([0.6, 0.8], 0.55)  # gap 0.2 then target 0.05 ahead
    assert w == pytest.approx([1.25, -0.25])
    assert w != pytest.approx(binomial_weights(2))


@pytest.mark.parametrize("bad", [0, 6, -1, 2.0, "2"])
def test_order_validation(bad):
    with pytest.raises(ValueError, match="order"):
        binomial_weights(bad)


# --------------------------------------------------------------------------- VP form (Prop. 2)
@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, MAX_ORDER), h=st.floats(0.01, 1.5, **finite), lam_star=st.floats(-6.0, 6.0, **finite))
def test_paper_weights_match_prop2_and_lagrange_on_exp_integrand(k, h, lam_star):
    w = paper_weights(k, h)
    # Prop. 2, written out independently
    prop2 = [(-1) ** (i + 1) * math.comb(k, i) * math.exp(i * h) for i in range(1, k + 1)]
    assert w == pytest.approx(prop2, rel=1e-12)
    # Lagrange extrapolation of g(lambda) = e^(-lambda) eps on a uniform lambda grid -> w_j e^(lambda* - lambda_j)
    lams = [lam_star - j * h for j in range(1, k + 1)]
    lw = lagrange_weights(lams, lam_star)
    derived = [wj * math.exp(lam_star - lj) for wj, lj in zip(lw, lams)]
    assert w == pytest.approx(derived, rel=1e-9, abs=1e-12)
    # the weights do not sum to 1
    assert sum(w) == pytest.approx(1.0 - (1.0 - math.exp(h)) ** k, rel=1e-9, abs=1e-12)
    if k == 1 or h > 0.5:
        assert abs(sum(w) - 1.0) > 1e-3


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, MAX_ORDER), h=st.floats(0.02, 1.0, **finite),
       coeffs=st.lists(st.floats(-2.0, 2.0, **finite), min_size=MAX_ORDER, max_size=MAX_ORDER))
def test_paper_weights_exact_when_exp_minus_lambda_eps_is_polynomial(k, h, coeffs):
    """Prop. 2 is exact for eps(lambda) = e^lambda * p(lambda) with deg p <= k-1 on a uniform grid."""
    c = coeffs[:k]
    eps = lambda lam: math.exp(lam) * poly(c, lam)  # noqa: E731
    lam_star = 0.3
    hist = [eps(lam_star - j * h) for j in range(1, k + 1)]
    pred = sum(w * e for w, e in zip(paper_weights(k, h), hist))
    size = 1.0 + sum(abs(w * e) for w, e in zip(paper_weights(k, h), hist))
    assert abs(pred - eps(lam_star)) <= 1e-11 * size


@pytest.mark.parametrize("k", ORDERS)
def test_paper_weights_flow_form_is_binomial(k):
    assert paper_weights(k, 0.0) == binomial_weights(k)
    assert paper_weights(k) == binomial_weights(k)


# --------------------------------------------------------------------------- Adams-Bashforth, Table 4
F = Fraction
TABLE_4 = {
    1: [F(1)],
    2: [F(3, 2), F(-1, 2)],
    3: [F(23, 12), F(-4, 3), F(5, 12)],
    4: [F(55, 24), F(-59, 24), F(37, 24), F(-3, 8)],
    5: [F(1901, 720), F(-2774, 720), F(2616, 720), F(-1274, 720), F(251, 720)],
}


@pytest.mark.parametrize("k", ORDERS)
def test_adams_bashforth_table_4(k):
    b = adams_bashforth_coefficients(k)
    assert all(isinstance(x, Fraction) for x in b)
    assert b == TABLE_4[k]
    assert sum(b) == 1


@pytest.mark.parametrize("k", ORDERS)
def test_adams_bashforth_is_integral_of_lagrange_basis(k):
    """b_j = int_0^1 L_j(s) ds on nodes s = 0, -1, ..., -(k-1) (Appendix A), via Gauss-Legendre."""
    x, wq = np.polynomial.legendre.leggauss(8)
    s_pts, s_w = 0.5 * (x + 1.0), 0.5 * wq
    nodes = [-float(m) for m in range(k)]
    integral = sum(sw * np.array(lagrange_weights(nodes, float(s))) for s, sw in zip(s_pts, s_w))
    assert integral == pytest.approx([float(v) for v in adams_bashforth_coefficients(k)], abs=1e-12)


# --------------------------------------------------------------------------- convergence order
def _loglog_slope(hs, errs):
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


@pytest.mark.parametrize("k", ORDERS)
@pytest.mark.parametrize("fn", [np.sin, np.exp, lambda x: 1.0 / (2.0 + x)], ids=["sin", "exp", "rational"])
def test_extrapolation_error_shrinks_at_order_k(k, fn):
    """Non-uniform history (relative gaps 1, 1.7, 0.6, 1.3, 0.9) scaled by h; target one gap ahead."""
    gaps = [1.0, 1.7, 0.6, 1.3, 0.9][:k]
    c0 = 1.0
    hs = np.array([0.08, 0.04, 0.02, 0.01])
    errs = []
    for h in hs:
        nodes = [c0 - h * sum(gaps[:j]) for j in range(k)]  # c0, c0 - g1 h, ...
        target = c0 + h
        w = lagrange_weights(nodes, target)
        pred = sum(wj * fn(c) for wj, c in zip(w, nodes))
        errs.append(abs(pred - fn(target)))
    slope = _loglog_slope(hs, errs)
    assert abs(slope - k) < 0.2, (k, slope, errs)


def test_amplification():
    assert amplification([1.0]) == 1.0
    assert amplification([2.0, -1.0]) == 3.0
    assert amplification(lagrange_weights([0.0, -6.0], 5.0)) == pytest.approx(1 + 2 * 5 / 6)
