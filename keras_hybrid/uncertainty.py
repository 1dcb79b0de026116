"""Uncertainty of fitted constants: the linear algebra (pure NumPy).

Gauss–Newton / Laplace approximation of a least-squares fit with
parameters split into the physical constants `c` (in their raw,
unconstrained space) and the network weights `w`. With residuals `r` over
`n` observed values, the Jacobian blocks `J_c = dr/dc`, `J_w = dr/dw`,
the noise variance `sigma^2` and a Gaussian prior of precision `alpha` on
the weights, the posterior precision is

```
H = [[J_c^T J_c, J_c^T J_w], [J_w^T J_c, J_w^T J_w]] / sigma^2 + [[0, 0], [0, alpha I]]
```

and the constants' marginal covariance is the inverse of the Schur
complement of the weight block,

```
Cov(c) = sigma^2 (A_cc - A_cw (A_ww + alpha sigma^2 I)^-1 A_wc)^-1,   A = J^T J
```

which tends to the network-fixed (conditional) covariance
`sigma^2 A_cc^-1` as `alpha -> inf`. Matrix-free, the same Schur
complement is computed in data space,
`J_c^T (I + J_w J_w^T / (alpha sigma^2))^-1 J_c` (no cancellation when
the network takes over most of a constant's information), by
`conjugate_gradient(..., quadratic=True)`. The prior precision can be
chosen by the evidence (`evidence_precision`, with the spectrum from
`lanczos_spectrum` when `J_w^T J_w` is not formed). Without a network it is the classical
nonlinear-least-squares covariance `s^2 (J^T J)^-1`.

These functions hold no Keras state; `keras_hybrid.diagnostics` computes
the Jacobian products from a model and calls them.

Reference:
    Bates & Watts, *Nonlinear Regression Analysis and Its Applications*
    (Wiley, 1988), ch. 2; MacKay, "A practical Bayesian framework for
    backpropagation networks", Neural Computation 4 (1992); Daxberger et
    al., "Laplace Redux", arXiv:2106.14806.
"""

import math
import numbers
from statistics import NormalDist

import numpy as np

#: Verdict thresholds (documented in `constant_uncertainty`).
IDENTIFIED_WIDTH = 1.0  # (hi - lo) / |estimate| at most this: identified (std. err. ~ 25 %)
WEAK_WIDTH = 2.0  # at most this: weakly identified; above: not identified
NETWORK_SHARE = 0.99  # fraction of a constant's information the network can mimic
NEAR_NULL = 1e-3  # eigenvalue of the constants' correlation matrix
BOUND_MARGIN = 0.01  # estimate within 1 % of the bound range (or of a zero bound)


def normal_quantile(level):
    """Two-sided standard-normal quantile: `z` with `P(|Z| <= z) = level`."""
    if not isinstance(level, numbers.Real) or isinstance(level, bool) or not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be a number in (0, 1). Received: level={level!r}")
    return NormalDist().inv_cdf(0.5 + float(level) / 2.0)


def _betacf(a, b, x):
    # Continued fraction of the incomplete beta function (modified Lentz).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a, b, x):
    """Regularized incomplete beta function `I_x(a, b)`."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_quantile(level, dof):
    """Two-sided Student-t quantile: `t` with `P(|T| <= t) = level` for
    `dof` (real, > 0) degrees of freedom; the normal quantile for
    `dof = inf`."""
    z = normal_quantile(level)
    if dof == math.inf:
        return z
    if not dof > 0:
        raise ValueError(f"`dof` must be > 0. Received: dof={dof!r}")

    def tail(t):  # P(|T| > t)
        return _betainc(dof / 2.0, 0.5, dof / (dof + t * t))

    lo, hi = 0.0, z
    while tail(hi) > 1.0 - level:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tail(mid) > 1.0 - level else (lo, mid)
    return 0.5 * (lo + hi)


def chi2_1_quantile(level):
    """Quantile of the chi-square distribution with one degree of freedom
    (`3.841` at `level=0.95`)."""
    return normal_quantile(level) ** 2


def conjugate_gradient(matvec, b, shift=0.0, tol=1e-6, max_iter=200, quadratic=False, delay=5,
                       eig_lower=None):
    """Solves `(M + shift I) x = b` for a symmetric positive semi-definite
    `M` given by `matvec(v) = M v`.

    ```
    r_k = b - (M + shift I) x_k,   stop when ||r_k|| <= tol ||b||
    ```

    With `quadratic=True` the quantity of interest is `q = b^T x` (for
    `keras_hybrid.diagnostics`, a constant's information left after the
    network is integrated out). Conjugate gradients approach it from
    below: `q_k = b^T x_k` grows monotonically to `q`, and the growth
    still to come is the error's energy norm, estimated by the growth over
    the last `delay` iterations (Strakos & Tichy, ETNA 13, 2002). The
    iteration then stops when

    ```
    q_k - q_(k - delay) <= tol q_k
    ```

    or when the residual is below `1e-10 ||b||`. With `eig_lower`, a
    lower bound `mu` of the eigenvalues of `M + shift I`, the Gauss–Radau
    rule bounds `q` from above (Meurant & Tichy, Numerical Algorithms 82,
    2019; CG's step `gamma_k`, `delta_(k+1) = ||r_(k+1)||^2 / ||r_k||^2`):

    ```
    l_k = sum_(j<k) gamma_j ||r_j||^2   (= b^T x_k in exact arithmetic)
    g_0 = 1 / mu,   g_(k+1) = (g_k - gamma_k) / (mu (g_k - gamma_k) + delta_(k+1))
    l_k <= q <= l_k + g_k ||r_k||^2
    ```

    and the iteration also stops as soon as that bracket is narrower than
    `tol l_k` (a certified stop; the delay rule is an estimate).

    With `quadratic="width"` both rules measure `q^(-1/2)` instead, which
    is proportional to the width of a confidence interval from the
    information `q`: stop when `sqrt(q_k / q_(k - delay)) - 1 <= tol` or
    `sqrt(upper / lower) - 1 <= tol` (the width from `l_k` is then at most
    `1 + tol` times the converged one). The
    delay rule and `quadratic` then use `l_k`: computed directly, `b^T x_k`
    can stall in finite precision (float32 products) while `l_k` keeps
    growing to `q`.

    Args:
        matvec: function of a 1-D float64 array returning `M v`.
        b: right-hand side, 1-D.
        shift: added to the diagonal (a scalar or a 1-D array). Defaults
            to `0`.
        tol: relative tolerance (of the residual, or of `q`). Defaults to
            `1e-6`.
        max_iter: iteration limit. Defaults to `200`.
        quadratic: stop on `q = b^T x` (`True`) or on `q^(-1/2)`
            (`"width"`) instead of the residual. Defaults to `False`.
        delay: iterations over which `q`'s growth is measured. Defaults to
            `5`.
        eig_lower: with `quadratic`, a number `mu > 0` below every
            eigenvalue of `M + shift I` (e.g. `1` for `I + J J^T`), for the
            upper bound. Defaults to `None` (no upper bound).

    Returns:
        `(x, info)` where `info` has `iterations`, `residual` (relative),
        `converged` and, with `quadratic`, `quadratic` (`b^T x`, or `l_k`
        with `eig_lower`); with `eig_lower` also `lower` and `upper` (the bracket of `q`),
        `bracketed` (whether the bracket stopped the iteration) and
        `lower_history`, `upper_history` (per iteration).
    """
    if quadratic not in (False, True, "width"):
        raise ValueError(
            f"`quadratic` must be False, True or \"width\". Received: quadratic={quadratic!r}"
        )
    # Relative growth of q that moves q^(-1/2) by `tol`.
    q_tol = (1.0 + tol) ** 2 - 1.0 if quadratic == "width" else tol
    if eig_lower is not None and not (isinstance(eig_lower, (int, float)) and eig_lower > 0):
        raise ValueError(f"`eig_lower` must be a number > 0 or None. Received: eig_lower={eig_lower!r}")
    b = np.asarray(b, "float64")
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = float(r @ r)
    norm_b = math.sqrt(rr)
    if norm_b == 0.0:
        info = {"iterations": 0, "residual": 0.0, "converged": True, "quadratic": 0.0}
        if eig_lower is not None:
            info.update(lower=0.0, upper=0.0, bracketed=True, lower_history=[], upper_history=[])
        return x, info
    k = 0
    history = [0.0]
    settled = bracketed = False
    residual_tol = 1e-10 if quadratic else tol
    lower, radau = 0.0, (1.0 / eig_lower if eig_lower is not None else None)
    lows, ups = [], []
    for k in range(1, max_iter + 1):
        q = np.asarray(matvec(p), "float64") + shift * p
        pq = float(p @ q)
        if pq <= 0.0:
            break
        step = rr / pq
        x += step * p
        r -= step * q
        rr_new = float(r @ r)
        if radau is not None:
            lower += step * rr
            lows.append(lower)
            if rr_new == 0.0:  # an exact solution: the bracket closes (and 0/0 below)
                ups.append(lower)
            else:
                diff = radau - step
                radau = diff / (eig_lower * diff + rr_new / rr)
                ups.append(lower + radau * rr_new)
        if quadratic:
            # With the bracket, the sum: b^T x_k computed directly can stall
            # in finite precision while the sum keeps track (Strakos & Tichy).
            history.append(lower if radau is not None else float(b @ x))
            if radau is not None and ups[-1] - lower <= q_tol * lower:
                rr = rr_new
                settled = bracketed = True
                break
            if len(history) > delay and history[-1] - history[-1 - delay] <= q_tol * (
                    history[-1 - delay] if quadratic == "width" else history[-1]):
                rr = rr_new
                settled = True
                break
        if math.sqrt(rr_new) <= residual_tol * norm_b:
            rr = rr_new
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    residual = math.sqrt(rr) / norm_b
    info = {"iterations": k, "residual": residual, "converged": settled or residual <= residual_tol}
    if quadratic:
        info["quadratic"] = history[-1] if radau is not None else float(b @ x)
    if radau is not None:
        info.update(lower=lows[-1] if lows else 0.0, upper=ups[-1] if ups else rr / eig_lower,
                    bracketed=bracketed, lower_history=lows, upper_history=ups)
    return x, info


def schur_information(a_cc, a_cw=None, a_ww=None, shift=0.0):
    """Constants' information left after marginalizing the weights (dense).

    ```
    S = A_cc - A_cw (A_ww + shift I)^-1 A_wc,   shift = alpha sigma^2
    ```

    Args:
        a_cc: `(p_c, p_c)` block of `J^T J`.
        a_cw: `(p_c, p_w)` block, or `None` (no network).
        a_ww: `(p_w, p_w)` block, or `None`.
        shift: `alpha sigma^2` (scalar or per weight); `inf` gives `A_cc`
            (network fixed).

    Returns:
        The `(p_c, p_c)` matrix `S` (in units of `J^T J`).
    """
    a_cc = np.atleast_2d(np.asarray(a_cc, "float64"))
    if a_cw is None or np.size(a_cw) == 0 or np.all(np.isinf(shift)):
        return a_cc
    a_cw = np.asarray(a_cw, "float64")
    a_ww = np.asarray(a_ww, "float64")
    m = a_ww + np.diag(np.broadcast_to(np.asarray(shift, "float64"), a_ww.shape[:1]))
    solved = np.linalg.lstsq(m, a_cw.T, rcond=None)[0]
    s = a_cc - a_cw @ solved
    return 0.5 * (s + s.T)


def _unit_diagonal_scales(m):
    """`d` with `m / (d d^T)` of unit diagonal (1 where the diagonal is not
    positive): solving and eigen-decomposing the rescaled matrix does not
    depend on the units of the parameters, whose columns may differ by
    many orders of magnitude."""
    diagonal = np.diag(m).copy()
    return np.sqrt(np.where(diagonal > 0, diagonal, 1.0))


def effective_parameters(a, prior_diagonal, noise_variance):
    """Effective number of parameters `tr(A (A + sigma^2 P)^-1)` of a
    Laplace fit with prior precisions `P = diag(prior_diagonal)` (a
    parameter without prior, `P_ii = 0`, counts 1)."""
    a = np.asarray(a, "float64")
    m = a + noise_variance * np.diag(np.asarray(prior_diagonal, "float64"))
    d = _unit_diagonal_scales(m)
    # tr(M^-1 A) = tr((D^-1 M D^-1)^-1 D^-1 A D^-1): the same trace.
    scaled = np.linalg.lstsq(m / np.outer(d, d), a / np.outer(d, d), rcond=None)[0]
    return float(np.trace(scaled))


def require_residuals(rss, n):
    """Raises if the residual sum of squares `rss` is 0: zero
    residuals leave nothing to estimate the noise from, and intervals of
    width 0 would read as certainty (R's `nls` refuses such data too)."""
    if rss <= 0:
        raise ValueError(
            f"The model reproduces every observed value exactly (residual sum of squares {rss!r} "
            f"over n={n} values), so the noise cannot be estimated from the residuals and the "
            "constants' uncertainty is undefined. Noise-free (simulated) data need measurement "
            "noise added before an uncertainty analysis."
        )


def noise_variance(rss, n, parameters):
    """`s^2 = RSS / (n - parameters)`, the residual variance estimate."""
    dof = n - parameters
    if dof <= 0:
        return float("nan")
    return float(rss) / dof


def _null_eigenvalues(eigval):
    """Which eigenvalues of an information matrix count as zero: at most
    `1e-12` of the largest (all of them for a zero matrix)."""
    top = max(float(np.max(np.abs(eigval))), 1e-300) if eigval.size else 1e-300
    return eigval <= 1e-12 * top


def _scaled_eigh(information):
    """Eigen-decomposition of the information rescaled to unit diagonal
    (`_unit_diagonal_scales`), so that which directions are null does not
    depend on the constants' units; the scales `d` come with it. A
    constant with no information (a zero diagonal entry) keeps a zero row
    and column: a null direction."""
    s = np.atleast_2d(np.asarray(information, "float64"))
    d = _unit_diagonal_scales(s)
    scaled = s / np.outer(d, d)
    empty = np.diag(s) <= 0
    scaled[empty, :] = 0.0
    scaled[:, empty] = 0.0
    eigval, eigvec = np.linalg.eigh(scaled)
    return eigval, eigvec, d


def information_rank(information):
    """Number of directions a (symmetric) information matrix determines
    (its eigenvalues not null, as in `covariance_from_information`). A
    constant the data carry no information on does not count as a fitted
    parameter."""
    eigval, _, _ = _scaled_eigh(information)
    return int(np.sum(~_null_eigenvalues(eigval)))


# A constant whose eigenvector weight in the null space of `S` is above this
# has an unbounded variance (eigenvectors of a singular `S` carry rounding
# of about machine epsilon times its condition).
NULL_SPACE_WEIGHT = 1e-10


def covariance_from_information(information, noise_var):
    """`sigma^2 S^-1`, with `inf` for every entry of a constant that has a
    component along a null direction of a singular `S`.

    The other constants keep the pseudo-inverse's finite entries: a
    constant that the model does not use (its value replaced per sample at
    call time, say) makes its own variance unbounded, not everyone's.
    Null directions are those of `S` rescaled to unit diagonal, so that
    constants whose units put their information orders of magnitude apart
    are not taken for unbounded.
    """
    eigval, eigvec, d = _scaled_eigh(information)
    null = _null_eigenvalues(eigval)
    inv = np.where(null, 0.0, 1.0 / np.where(null, 1.0, eigval))
    cov = (eigvec * inv) @ eigvec.T / np.outer(d, d)
    unbounded = np.sum(eigvec[:, null] ** 2, axis=1) > NULL_SPACE_WEIGHT
    cov[unbounded, :] = np.inf
    cov[:, unbounded] = np.inf
    return noise_var * cov


def physical_intervals(raw, raw_stderr, to_physical, derivative, z):
    """Estimates, delta-method standard errors and end-point intervals.

    ```
    estimate = g(raw),   stderr = |g'(raw)| * stderr_raw,
    interval = sort(g(raw - z stderr_raw), g(raw + z stderr_raw))
    ```

    The end points are mapped through the bijector `g`, so they respect
    the constant's constraint.

    Args:
        raw: raw values, 1-D.
        raw_stderr: their standard errors, 1-D (`inf` allowed).
        to_physical: list of functions `g_i` (float -> float).
        derivative: list of `g_i'(raw_i)` values.
        z: normal quantile of the level.

    Returns:
        `(estimates, stderr, intervals)` as lists.
    """
    estimates, stderr, intervals = [], [], []
    for r, se, g, d in zip(raw, raw_stderr, to_physical, derivative):
        estimates.append(float(g(r)))
        stderr.append(float(abs(d) * se) if math.isfinite(se) else math.inf)
        if math.isfinite(se):
            ends = sorted((float(g(r - z * se)), float(g(r + z * se))))
        else:
            ends = [float(g(-math.inf)), float(g(math.inf))]
        intervals.append(tuple(ends))
    return estimates, stderr, intervals


def correlation(cov):
    """Correlation matrix of a covariance (`nan` where a variance is not
    finite)."""
    cov = np.atleast_2d(np.asarray(cov, "float64"))
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    corr[~np.isfinite(corr)] = np.nan
    np.fill_diagonal(corr, 1.0)
    return corr


def profile_interval(values, rss, n, rss_min=None, level=0.95):
    """Likelihood-ratio interval from a profile of the residual sum of
    squares.

    ```
    {v : n log(RSS(v) / RSS_min) <= chi2_1(level)}
    ```

    Linear interpolation of `sqrt(statistic)` between grid points; an end at which the profile
    never crosses the threshold is reported as `-inf`/`inf` (flat or too
    short a grid). Where the set is not connected (grid points above the
    threshold between points below it: a profile with two minima, or a
    refit that did not converge), the interval spans all of it, from the
    lowest grid point below the threshold to the highest. If no grid point
    is inside the interval (`rss_min` below every point's RSS by more than
    the threshold), there is nothing to interpolate from and both ends are
    `nan`: add the free fit's point.

    Args:
        values: grid of the fixed constant, 1-D.
        rss: residual sum of squares after refitting at each value.
        n: number of observed values.
        rss_min: the smallest RSS (e.g. of the free fit). Defaults to the
            grid's minimum.
        level: confidence level. Defaults to `0.95`.

    Returns:
        `(lo, hi, statistic)`, `statistic = n log(RSS/RSS_min)` per value.
    """
    values = np.asarray(values, "float64")
    rss = np.asarray(rss, "float64")
    order = np.argsort(values)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    values, rss = values[order], rss[order]
    best = float(np.nanmin(rss)) if rss_min is None else min(float(rss_min), float(np.nanmin(rss)))
    require_residuals(best, n)
    stat = n * np.log(rss / best)
    threshold = chi2_1_quantile(level)
    inside = np.flatnonzero(stat <= threshold)
    if inside.size == 0:
        return math.nan, math.nan, stat[inverse]
    # Interpolate the root deviance sqrt(statistic), nearly linear in the
    # value near the minimum (exactly so for a linear model), outward from
    # the outermost grid points inside the set.
    root = np.sqrt(np.clip(stat, 0.0, None))
    cut = math.sqrt(threshold)
    lo, hi = -math.inf, math.inf
    # (Points whose refit failed, NaN, are passed over.)
    first, last = int(inside[0]), int(inside[-1])
    below = [i for i in range(first) if not np.isnan(stat[i])]
    above = [i for i in range(last + 1, len(values)) if not np.isnan(stat[i])]
    if below:
        out = below[-1]
        f = (cut - root[first]) / (root[out] - root[first])
        lo = float(values[first] + f * (values[out] - values[first]))
    if above:
        out = above[0]
        f = (cut - root[last]) / (root[out] - root[last])
        hi = float(values[last] + f * (values[out] - values[last]))
    return lo, hi, stat[inverse]


def profile_gaps(values, statistic, threshold):
    """Grid values above `threshold` between grid values below it (sorted):
    where the likelihood-ratio set is not an interval."""
    values = np.asarray(values, "float64")
    statistic = np.asarray(statistic, "float64")
    order = np.argsort(values)
    values, statistic = values[order], statistic[order]
    inside = np.flatnonzero(statistic <= threshold)
    if inside.size < 2:
        return []
    between = slice(int(inside[0]), int(inside[-1]) + 1)
    return [float(v) for v, s in zip(values[between], statistic[between]) if s > threshold]


def verdicts(names, estimates, intervals, information_fixed, information_marginal, bounds,
             profile_flat=None, path_stable=None, path_eligible=None, path_probed=True,
             scales=None):
    """Identifiability verdict and warnings per constant.

    Rules (thresholds are module constants):

    - relative width `w = (hi - lo) / |estimate|` of the marginal interval:
      `w <= 1` identified, `w <= 2` weakly identified, otherwise (or
      infinite) not identified;
    - a flat profile (`profile_flat[name]` true) makes it "not identified";
    - if marginalizing the network removes more than 99 % of a constant's
      information (`S_ii / A_ii < 0.01`), the constant is "confounded with
      the network" and at most "weakly identified": the local (Laplace)
      interval measures the noise, not how far the estimate moves when
      the network's regularization changes;
    - with a radius path (`path_stable` given): a confounded constant that
      stays put over two or more eligible radii (`path_stable[name]`
      true) is not downgraded (every radius the data accept agrees on
      it), unless those radii barely change the fit (`path_probed`
      false: their agreement tests nothing); a constant that moves over
      two or more eligible radii is at most "weakly identified" (the
      regularization, not the data, decides it);
    - a near-null eigenvector (eigenvalue < 1e-3) of the constants'
      normalized information names a confounded combination of constants
      (a note: its effect on each constant is already in the interval
      widths, which are infinite for an exact null direction);
    - an estimate within 1 % of a bound is warned about: of the range for
      `(lo, hi)`; for a positive constant, below 1 % of its typical
      magnitude (`scales`, a `PhysicalConstant`'s `scale`: its initial
      value unless given), or without `scales` below 1 % of the
      interval's upper end. (A wide interval alone does not put a
      positive constant next to 0: it is computed in log space.)

    Args:
        names: constant names.
        estimates: physical estimates.
        intervals: `(lo, hi)` per constant.
        information_fixed: `A_cc` (raw space), `(p, p)`.
        information_marginal: Schur complement `S`, `(p, p)`.
        bounds: per constant `None`, `"positive"` or `(lo, hi)`.
        profile_flat: optional dict `name -> bool`.
        scales: optional typical magnitude per constant (> 0), for the
            bound warning of positive constants.
        path_stable: optional dict `name -> bool` (`RadiusPath.stable`).
        path_eligible: the eligible radii of that path (for the notes).
        path_probed: whether the eligible radii change the fit
            (`RadiusPath.probed`): a bool, or `name -> bool` per constant
            (one the fits did not move is not probed). Defaults to `True`.

    Returns:
        `(verdicts, notes, warnings)`: `name -> verdict`, `name -> list of
        explanations`, list of warning strings.
    """
    p = len(names)
    a = np.atleast_2d(np.asarray(information_fixed, "float64"))
    s = np.atleast_2d(np.asarray(information_marginal, "float64"))
    rank = {"identified": 0, "weakly identified": 1, "not identified": 2}
    out, notes, warnings = {}, {name: [] for name in names}, []
    for i, name in enumerate(names):
        lo, hi = intervals[i]
        est = estimates[i]
        width = (hi - lo) / abs(est) if est != 0 and math.isfinite(hi - lo) else math.inf
        verdict = (
            "identified" if width <= IDENTIFIED_WIDTH
            else "weakly identified" if width <= WEAK_WIDTH else "not identified"
        )
        if math.isfinite(width):
            notes[name].append(f"relative interval width {width:.3g}")
        else:
            notes[name].append("interval unbounded")
        kept = s[i, i] / a[i, i] if a[i, i] > 0 else 0.0
        if a[i, i] <= 0:
            notes[name].append(f"the data carry no information on {name}")
            verdict = "not identified"
        elif kept < 1.0 - NETWORK_SHARE:
            notes[name].append(
                f"{name} is confounded with the network (the network can mimic "
                f"{1 - max(kept, 0):.2%} of its effect on the fit; the network-fixed interval "
                f"would be {1 / math.sqrt(max(kept, 1e-300)):.3g} times too narrow)"
            )
            stays_put = bool(path_stable and path_stable.get(name))
            probed = path_probed.get(name, True) if isinstance(path_probed, dict) else path_probed
            if stays_put and probed:
                notes[name].append(
                    f"{name} stays put over the eligible radii {path_eligible}: the confounding "
                    "does not lower its verdict, which the interval's width decides (the "
                    "interval includes its range over them)"
                )
            else:
                verdict = max(verdict, "weakly identified", key=rank.get)
                if stays_put:
                    notes[name].append(
                        f"{name} stays put over the eligible radii {path_eligible}, but they "
                        "barely change the fit: no evidence that the data decide it"
                    )
                elif path_stable is None:
                    notes[name].append(
                        "the local interval cannot tell whether the estimate depends on the "
                        "regularization: pass a radius path (`path=`) to check"
                    )
        many = path_eligible is not None and len(path_eligible) >= 2
        if path_stable is not None and not path_stable.get(name) and many:
            notes[name].append(
                f"{name} moves over the eligible radii {path_eligible}, which fit the validation "
                "data equally well: the regularization, not the data, decides it"
            )
            verdict = max(verdict, "weakly identified", key=rank.get)
        elif path_stable is not None and not many:
            notes[name].append(
                f"only the radius {path_eligible} is eligible: the path cannot tell whether "
                f"{name} depends on the regularization"
            )
        if profile_flat and profile_flat.get(name):
            notes[name].append(f"the profile of {name} is flat")
            verdict = "not identified"
        out[name] = verdict
        bound = bounds[i]
        margin = None
        if bound == "positive" and scales is not None:
            margin = est <= BOUND_MARGIN * scales[i]
            where = f"0 (below 1% of its typical magnitude {scales[i]:.4g})"
        elif bound == "positive":
            margin = est <= BOUND_MARGIN * max(abs(hi), abs(est), 1e-300) if math.isfinite(hi) else False
            where = "0"
        elif isinstance(bound, tuple):
            span = bound[1] - bound[0]
            near_lo = est - bound[0] <= BOUND_MARGIN * span
            near_hi = bound[1] - est <= BOUND_MARGIN * span
            margin = near_lo or near_hi
            where = repr(bound[0] if near_lo else bound[1])
        if margin:
            warnings.append(
                f"{name} = {est:.4g} is at or next to its bound {where}: the interval, "
                "computed in the constraint's unbounded (log or logit) space, never reaches "
                "the bound, and where the data allow the bound itself the approximation is "
                f"poor; `profile_likelihood` over values down to the bound tells."
            )
    if p > 1:
        d = np.sqrt(np.clip(np.diag(s), 1e-300, None))
        r = s / np.outer(d, d)
        eigval, eigvec = np.linalg.eigh(0.5 * (r + r.T))
        for k in range(p):
            if eigval[k] < NEAR_NULL * max(float(eigval[-1]), 1e-300):
                vec = eigvec[:, k] / np.max(np.abs(eigvec[:, k]))
                involved = [i for i in range(p) if abs(vec[i]) > 0.1]
                if len(involved) < 2:
                    continue
                text = (
                    " and ".join(names[i] for i in involved)
                    + ": direction ("
                    + ", ".join(f"{eigvec[i, k]:.2f}" for i in involved)
                    + ") in raw space is not identified"
                )
                for i in involved:
                    notes[names[i]].append(text)
    return out, notes, warnings


def lanczos_spectrum(matvec, dim, steps=30, probes=4, seed=0):
    """Stochastic Lanczos quadrature of a symmetric positive semi-definite
    `M` given by `matvec(v) = M v`: nodes and weights such that

    ```
    tr f(M) ~ sum_k weights_k f(nodes_k)
    ```

    for a smooth `f`. Each of `probes` Rademacher vectors starts `steps`
    Lanczos iterations (fully reorthogonalized); the Ritz values are the
    nodes and `dim / probes` times the squared first components of the
    Ritz vectors the weights (they sum to `dim`). With `steps >= dim` and
    one probe the nodes are the eigenvalues (Golub & Meurant, *Matrices,
    Moments and Quadrature*, 2010; Ubaru, Chen & Saad, SIAM J. Matrix
    Anal. Appl. 38, 2017).

    Args:
        matvec: function of a 1-D float64 array returning `M v`.
        dim: size of `M`.
        steps: Lanczos iterations per probe. Defaults to `30`.
        probes: number of random start vectors. Defaults to `4`.
        seed: seed of the start vectors. Defaults to `0`.

    Returns:
        `(nodes, weights)`, 1-D arrays.
    """
    for arg, value in (("dim", dim), ("steps", steps), ("probes", probes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{arg}` must be an integer >= 1. Received: {arg}={value!r}")
    rng = np.random.default_rng(seed)
    steps = min(int(steps), int(dim))
    nodes, weights = [], []
    for _ in range(probes):
        v = rng.choice([-1.0, 1.0], size=dim)
        v /= np.linalg.norm(v)
        basis = [v]
        alphas, betas = [], []
        for k in range(steps):
            w = np.asarray(matvec(basis[-1]), "float64")
            a = float(basis[-1] @ w)
            alphas.append(a)
            q = np.stack(basis, 1)
            w = w - q @ (q.T @ w)
            w = w - q @ (q.T @ w)
            b = float(np.linalg.norm(w))
            if k == steps - 1 or b <= 1e-10 * max(abs(a), 1e-300):
                break
            betas.append(b)
            basis.append(w / b)
        t = np.diag(alphas) + np.diag(betas[:len(alphas) - 1], 1) + np.diag(betas[:len(alphas) - 1], -1)
        theta, vecs = np.linalg.eigh(t)
        nodes.append(np.clip(theta, 0.0, None))
        weights.append(vecs[0] ** 2 * dim / probes)
    return np.concatenate(nodes), np.concatenate(weights)


def well_determined(nodes, weights, shift):
    """MacKay's `gamma = tr(A (A + shift I)^-1) = sum_k w_k l_k / (l_k + shift)`:
    the effective number of weights the data determine, from the
    eigenvalues `l_k` of `A = J_w^T J_w` (or quadrature nodes and weights
    from `lanczos_spectrum`; `weights=None` counts each node once)."""
    nodes = np.asarray(nodes, "float64")
    weights = np.ones_like(nodes) if weights is None else np.asarray(weights, "float64")
    return float(np.sum(weights * nodes / (nodes + shift)))


def evidence_precision(nodes, weights, weight_sq_norm, rss, n, constants, alpha=1.0,
                       max_iter=200, tol=1e-8):
    """Prior precision of the network weights by the evidence (type-II
    maximum likelihood, MacKay 1992), with the noise variance, at fixed
    weights.

    MacKay's fixed point, iterated from `alpha`:

    ```
    gamma   = sum_k w_k l_k / (l_k + alpha sigma^2)     (well-determined weights)
    alpha   = gamma / ||w||^2
    sigma^2 = RSS / (n - p_c - gamma)
    ```

    where `l_k` (with weights `w_k`) is the spectrum of `J_w^T J_w`, `||w||^2`
    the squared norm of the fitted weights and `p_c` the number of
    constants (no prior: each counts one parameter). At the fixed point
    the Gaussian-linearized evidence is stationary in `alpha` and `sigma^2`.
    A network that fits with small weights gets a tight prior (it cannot
    move far to imitate a constant), one with large weights a loose prior.

    Args:
        nodes: eigenvalues of `J_w^T J_w`, or quadrature nodes.
        weights: quadrature weights, or `None` (each node counts one).
        weight_sq_norm: `||w||^2` of the fitted network weights, > 0.
        rss: residual sum of squares.
        n: number of observed values.
        constants: number of constants `p_c`.
        alpha: starting precision. Defaults to `1`.
        max_iter: iteration limit. Defaults to `200`.
        tol: relative change of `alpha` at which to stop. Defaults to `1e-8`.

    Returns:
        A dict with `alpha`, `noise_variance`, `gamma`, `iterations`,
        `converged` and `reason` (why it stopped unconverged: the
        iteration limit, or no residual degree of freedom left, in which
        case the last state with a noise estimate is returned).
    """
    if not (math.isfinite(weight_sq_norm) and weight_sq_norm > 0):
        raise ValueError(
            "`weight_sq_norm` must be finite and > 0 (all network weights are zero: the "
            f"evidence has no scale). Received: weight_sq_norm={weight_sq_norm!r}"
        )
    require_residuals(rss, n)
    alpha = float(alpha)
    noise_var = noise_variance(rss, n, constants)
    gamma = 0.0
    converged = False
    k = 0
    if not math.isfinite(noise_var):
        raise ValueError(
            f"Too few observed values (n={n}) for {constants} constants: no noise estimate."
        )
    reason = "iteration limit"
    for k in range(1, max_iter + 1):
        gamma = well_determined(nodes, weights, alpha * noise_var)
        new_alpha = max(gamma, 1e-12) / weight_sq_norm
        new_noise_var = noise_variance(rss, n, constants + gamma)
        if not (math.isfinite(new_noise_var) and new_noise_var > 0):
            # The network would explain every value: no residual degree of
            # freedom left. Keep the last state with a noise estimate.
            reason = "no residual degrees of freedom left (n - p_c - gamma <= 0)"
            break
        change = abs(new_alpha - alpha) / alpha
        alpha, noise_var = new_alpha, new_noise_var
        if change <= tol:
            converged, reason = True, ""
            break
    return {"alpha": alpha, "noise_variance": noise_var, "gamma": gamma, "iterations": k,
            "converged": converged, "reason": reason}
