"""`constant_uncertainty`: Gauss–Newton / Laplace intervals of the trainable
physical constants (network marginalized or fixed), mapped through the
constraints to physical units, widened by a radius path's selection
ranges, and judged by identifiability verdicts.
"""

import math
import numbers
import time

import numpy as np
import tensorflow as tf

from keras_hybrid import diagnostics as _pkg
from keras_hybrid import ode
from keras_hybrid import uncertainty as un
from keras_hybrid._dataset_input import arrays_from_dataset
from keras_hybrid.diagnostics.information import _information_blocks, _marginal_information
from keras_hybrid.diagnostics.prior import _noise_and_prior
from keras_hybrid.diagnostics.residuals import (
    _check_is_model,
    _checked_data,
    _constant_entries,
    _network_variables,
    _Residuals,
)
from keras_hybrid.diagnostics.results import ConstantUncertainty
from keras_hybrid.sam import dense_gradients

_NETWORK_MODES = ("marginal", "fixed")
_METHODS = ("auto", "dense", "cg")


def _check_choice(arg, value, choices):
    if value not in choices:
        raise ValueError(f"`{arg}` must be one of {choices}. Received: {arg}={value!r}")


def _check_settings(level, network, prior_precision, method, path, cg_tol, cg_max_iter):
    """Whether `prior_precision` asks for the evidence; raises on an invalid setting."""
    _check_choice("network", network, _NETWORK_MODES)
    _check_choice("method", method, _METHODS)
    un.normal_quantile(level)  # validates `level`
    evidence = isinstance(prior_precision, str) and prior_precision == "evidence"
    if prior_precision is not None and not evidence and not (
        isinstance(prior_precision, numbers.Real) and not isinstance(prior_precision, bool)
        and 0 < prior_precision < math.inf
    ):
        raise ValueError(
            "`prior_precision` must be a finite number > 0, \"evidence\" or None (the "
            "limit of an infinite precision is `network=\"fixed\"`). "
            f"Received: prior_precision={prior_precision!r}"
        )
    if isinstance(cg_tol, bool) or not isinstance(cg_tol, (int, float)) or not 0 < cg_tol < 1:
        raise ValueError(f"`cg_tol` must be a number in (0, 1). Received: cg_tol={cg_tol!r}")
    if isinstance(cg_max_iter, bool) or not isinstance(cg_max_iter, (int, np.integer)) or cg_max_iter < 1:
        raise ValueError(f"`cg_max_iter` must be an integer >= 1. Received: cg_max_iter={cg_max_iter!r}")
    if path is not None and not hasattr(path, "selection_ranges"):
        raise TypeError(
            f"`path` must be a `RadiusPath` (from `kh.radius_path`) or None. Received: path={path!r}"
        )
    return evidence


def _check_model(model):
    """The trainable constants' entries; raises for a model the analysis
    cannot take."""
    _check_is_model(model)
    if not getattr(model, "built", False):
        raise ValueError("`model` must be built (called or fitted) before `constant_uncertainty`.")
    entries = _constant_entries(model)
    if not entries:
        raise ValueError(
            "`model` has no trainable physical constants: nothing to estimate. "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    adaptive = [
        layer.name for layer in model._flatten_layers(include_self=False, recursive=True)
        if getattr(layer, "method", None) in ode.ADAPTIVE_METHODS
    ]
    if adaptive:
        # Their gradients come from TFP's adjoint solve, which cannot be
        # differentiated again: every Jacobian product would read as zero.
        raise ValueError(
            "`constant_uncertainty` needs Jacobian products through the ODE solver, which the "
            "adaptive methods ('dopri5', 'bdf': TFP's adjoint solve) do not provide. Evaluate "
            "the fitted weights in the same model built with a fixed-step method (e.g. "
            "`method='rk4', max_step=...`, checking that its trajectories match). Received: "
            f"model with adaptive ODE layers {adaptive}"
        )
    return entries


def _check_derivatives(res, a_cc, names, step=1e-2):
    """Raises if a constant has no information although the residuals move
    with it: its Jacobian products came out as zeros (an operation that
    cannot be differentiated twice, e.g. a custom gradient), which would
    otherwise read as "the data carry no information"."""
    a_cc = np.atleast_2d(a_cc)
    params = res.params()
    for i, name in enumerate(names):
        if a_cc[i, i] > 0:
            continue
        moved = list(params)
        moved[i] = params[i] + step
        change = sum(float(tf.reduce_sum(tf.square(res.residual(moved, *c) - res.residual(params, *c))))
                     for c in res.chunks())
        if change > 0:
            raise ValueError(
                f"The residuals change with constant {name!r} (a raw step of {step:g} moves them "
                f"by {change ** 0.5:.3g}), but their Jacobian with respect to it came out as zero: "
                "the model contains an operation that cannot be differentiated twice (a custom "
                "gradient, `stop_gradient`), and `constant_uncertainty` needs second-order "
                f"products. Received: model with constant {name!r}"
            )


def _resolve_method(method, n, p_c, p_w):
    """`"dense"` or `"cg"`: the method to use (`"auto"` resolved), within
    the dense limits (the weights' alone while `n` is not known, `None`)."""
    too_large = p_w > _pkg.MAX_DENSE_WEIGHTS or (
        n is not None and n * (p_c + p_w) > _pkg.MAX_DENSE_ENTRIES)
    if method == "auto":
        method = "cg" if too_large else "dense"
    if method == "dense" and too_large:
        raise ValueError(
            f"`method='dense'` would build a Jacobian of n x p = {'n' if n is None else n} x "
            f"{p_c + p_w} with {p_w} "
            f"network weights; the limits are {_pkg.MAX_DENSE_ENTRIES} entries and "
            f"{_pkg.MAX_DENSE_WEIGHTS} weights. Use method='cg' (matrix-free) or 'auto'. "
            f"Received: method={method!r}"
        )
    return method


def _physical_intervals(entries, info, noise_var, level, n, p_eff):
    """`(cov, estimates, stderr, intervals, z)`: the raw covariance and the physical-unit results."""
    cov = un.covariance_from_information(info, noise_var)
    raw = [float(v.numpy()) for _, v, _ in entries]
    raw_se = [math.sqrt(c) if math.isfinite(c) and c >= 0 else math.inf for c in np.diag(cov)]
    specs = [s for _, _, s in entries]

    def mapper(spec):
        return lambda r: float(spec.to_physical(tf.constant(r, "float32")).numpy())

    derivatives = []
    for spec, r in zip(specs, raw):
        t = tf.constant(r, "float32")
        with tf.GradientTape() as tape:
            tape.watch(t)
            out = spec.to_physical(t)
        derivatives.append(float(tape.gradient(out, t).numpy()))
    z = un.t_quantile(level, n - p_eff)
    estimates, stderr, intervals = un.physical_intervals(raw, raw_se, [mapper(s) for s in specs], derivatives, z)
    return cov, estimates, stderr, intervals, z


def _widen_by_path(path, names, estimates, intervals):
    """`(intervals, selection, stable, within_noise)`: the intervals widened
    by `path`'s selection ranges, those ranges, which constants stay put
    (`path.stable`, or a range inside the statistical interval), and which
    of them only by the latter."""
    selection, stable = {}, None
    if path is None:
        return intervals, selection, stable, []
    intervals = list(intervals)
    ranges = path.selection_ranges()
    missing = [k for k in names if k not in ranges]
    if missing:
        raise ValueError(
            f"`path` has no values of the constants {missing}: it must come from the same "
            f"model. Received: path with constants {sorted(ranges)}"
        )
    stable = {k: bool(path.stable.get(k, False)) for k in names}
    within_noise = []
    for i, k in enumerate(names):
        # A constant whose range over the eligible radii lies inside its
        # own statistical interval moves by less than the noise lets the
        # data tell: as far as they can say, it stays put (the path's
        # fixed relative tolerance alone would downgrade a constant that
        # moves 9 % within a +-15 % interval).
        if (not stable[k] and len(path.eligible) >= 2
                and intervals[i][0] <= ranges[k][0] and ranges[k][1] <= intervals[i][1]):
            stable[k] = True
            within_noise.append(k)
        s_lo, s_hi = min(ranges[k][0], estimates[i]), max(ranges[k][1], estimates[i])
        selection[k] = (s_lo, s_hi)
        intervals[i] = (min(intervals[i][0], s_lo), max(intervals[i][1], s_hi))
    return intervals, selection, stable, within_noise


# A least-squares fit whose Gauss-Newton step moves a constant by more
# than this many standard errors is not at its minimum.
UNCONVERGED_STEP = 1.0


def _half_rss_gradient(res):
    """`J^T r`, the gradient of `RSS / 2` in every variable of `res`
    (flat, float64)."""

    def gradient(params, x, y, w):
        with tf.GradientTape() as tape:
            tape.watch(params)
            r = res.residual(params, x, y, w)
            half_rss = 0.5 * tf.reduce_sum(tf.square(r))
        return dense_gradients(
            tape.gradient(half_rss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO))

    compiled = tf.function(gradient, reduce_retracing=True)
    params = res.params()
    total = None
    for chunk in res.chunks():
        flat = np.concatenate([np.reshape(g.numpy(), [-1]).astype("float64")
                               for g in compiled(params, *chunk)])
        total = flat if total is None else total + flat
    return total


def _steps_in_standard_errors(information, reduced_gradient, noise_var):
    """`|I^+ g| / sqrt(sigma^2 diag(I^+))`: a Gauss-Newton step in units of
    the standard errors of the information `I` it is taken with."""
    inverse = np.linalg.pinv(np.atleast_2d(information))
    step = inverse @ reduced_gradient
    se = np.sqrt(noise_var * np.clip(np.diag(inverse), 0.0, None))
    return np.abs(step) / np.where(se > 0, se, np.inf)


def _gauss_newton_steps(res, a_cc, noise_var, p_c):
    """Per constant, the Gauss-Newton step from the fit, `-A_cc^+ J_c^T r`,
    in units of its standard error (raw space): 0 at the least-squares
    minimum."""
    return _steps_in_standard_errors(a_cc, _half_rss_gradient(res)[:p_c], noise_var)


def _marginal_gauss_newton_steps(res, blocks, info, shift, noise_var, p_c, solves):
    """Per constant, the Gauss-Newton step of the least-squares fit with
    the network's weights moving too, damped by their prior (`D`), in
    units of the marginal standard error: `S^+ J_c^T M^-1 r` with
    `M = I + J_w D^-1 J_w^T` (what is left of the constants' gradient once
    the weights have taken their share). 0 at a least-squares minimum,
    whatever the prior. With conjugate gradients `M^-1 J_c` are the solves
    behind `S`; dense, `J_c^T M^-1 r = g_c - A_cw (A_ww + D)^-1 g_w`."""
    if solves is None:
        gradient = _half_rss_gradient(res)
        damped = blocks.a_ww + np.diag(np.broadcast_to(shift, blocks.a_ww.shape[:1]))
        reduced = gradient[:p_c] - blocks.a_cw @ np.linalg.lstsq(damped, gradient[p_c:], rcond=None)[0]
    else:
        r = blocks.residuals
        if r is None:
            params = res.params()
            r = np.concatenate([res.residual(params, *chunk).numpy().astype("float64")
                                for chunk in res.chunks()])
        reduced = np.array([u @ r for u in solves])
    return _steps_in_standard_errors(info, reduced, noise_var)


def _fit_by_least_squares(model, prior_source):
    """Whether the fit minimized the squared error alone (no SAM, no L2
    weight decay), so that its constants should sit where a Gauss-Newton
    step leaves them: SAM's and a penalty's fixed points are elsewhere."""
    sam = getattr(model, "sam", None)
    return (sam is None or sam.is_plain) and not prior_source.startswith("from the L2")


def _cap_unconverged(verdict, notes, warnings, names, steps, with_network=False):
    """Caps at "weakly identified" the constants of a least-squares fit
    that a Gauss-Newton step would move by more than `UNCONVERGED_STEP`
    standard errors, and says so: the interval is centred on an estimate
    the data do not support (an optimizer stopped early, or slowed down
    next to a bound)."""
    moved = [(name, z) for name, z in zip(names, steps) if z > UNCONVERGED_STEP]
    if not moved:
        return
    shown = ", ".join(f"{name} by {z:.2g}" for name, z in moved)
    weights = " (the network's weights moving too, damped by their prior)" if with_network else ""
    warnings.append(
        f"the fit is not at the least-squares minimum: a Gauss-Newton step from it{weights} moves "
        f"{shown} standard errors, so the intervals are centred on estimates the data do not "
        "support. Train longer (or with another learning rate) and ask again."
    )
    for name, z in moved:
        notes[name].append(f"not converged: a Gauss-Newton step moves it by {z:.2g} standard errors")
        if verdict[name] == "identified":
            verdict[name] = "weakly identified"


def _cap_by_open_profiles(verdict, notes, profiles, entries):
    """A profile that does not close on one side within the constant's
    domain (the data do not bound it there), or that warns (its refits
    have not converged, the model is not at the minimum), makes its
    constant at most "weakly identified". A flat one has already made it
    "not identified"."""
    domains = {key: spec.domain for key, _, spec in entries}
    for profile in profiles or []:
        name = profile.name
        if name not in verdict or profile.flat:
            continue
        lo, hi = profile.interval
        domain = domains[name]
        reasons = []
        if lo <= domain[0] or hi >= domain[1]:
            reasons.append(f"its profile does not close within {name}'s domain "
                           f"(interval [{lo:.5g}, {hi:.5g}])")
        if getattr(profile, "warnings", None):
            reasons.append(f"its profile warns ({len(profile.warnings)} warning(s): see `print(profile)`)")
        if reasons and verdict[name] == "identified":
            verdict[name] = "weakly identified"
            notes[name].append(f"at most weakly identified: {'; '.join(reasons)}")


def _verdicts(entries, estimates, intervals, a_cc, info, flat, path, stable, evidence_warning, solver):
    """`(verdicts, notes, warnings)` per constant, with the evidence's and the solver's warnings."""
    names = [k for k, _, _ in entries]
    # A path whose fits have not converged shows nothing by its constants'
    # agreement: it counts as one that does not probe the fit.
    converged = path is None or getattr(path, "converged", True)
    verdict, notes, warnings = un.verdicts(
        names, estimates, intervals, a_cc, info, [s.constraint for _, _, s in entries], profile_flat=flat,
        path_stable=stable, path_eligible=None if path is None else list(path.eligible),
        path_probed=True if path is None else {
            name: path.probed and converged and not getattr(path, "unmoved", {}).get(name, False)
            for name in names},
        scales=[s.scale for _, _, s in entries],
    )
    if not converged:
        warnings.append(
            "the radius path's fits all train worse than the physics part alone: they have not "
            "converged, so its ranges and the constants' stability over it say little (see "
            "`print(path)`)."
        )
    if evidence_warning:
        warnings.append(evidence_warning)
    for name, i in zip(names, solver.get("cg", [])):
        # How much narrower the interval could be, by the solver's bracket.
        narrower = math.sqrt(i["upper"] / i["lower"]) if i.get("lower", 0) > 0 else 1.0
        if not i["converged"]:
            warnings.append(
                f"conjugate gradients stopped after {i['iterations']} iterations at relative "
                f"residual {i['residual']:.2g} before the constant's information settled: the "
                "marginal interval is an upper bound on the width."
            )
        elif narrower > 1 + _CG_LOOSE_BRACKET:
            # The delay rule stopped on a plateau that the bracket does not confirm.
            warnings.append(
                f"conjugate gradients for {name} stopped after {i['iterations']} iterations when "
                "its information stopped growing, but its bracket leaves room for an interval "
                f"up to {narrower:.3g} times narrower than reported "
                "(the reported one is the wider, conservative end): a smaller `cg_tol` iterates "
                "further."
            )
    return verdict, notes, warnings


# How much narrower an interval may be, by the CG bracket, before a report
# whose conjugate gradients stopped on a plateau says so.
_CG_LOOSE_BRACKET = 0.1


_SQUARED_ERROR_LOSSES = {"mse", "mean_squared_error", "MeanSquaredError"}


def _loss_warning(model):
    """A warning when the model was compiled with a loss other than the
    squared error that the intervals assume, or `None`."""
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    losses = list(loss.values()) if isinstance(loss, dict) else (
        list(loss) if isinstance(loss, (list, tuple)) else [loss])
    names = []
    for item in losses:
        if item is None:
            continue
        name = item if isinstance(item, str) else getattr(item, "__name__", type(item).__name__)
        if name not in _SQUARED_ERROR_LOSSES:
            names.append(name)
    if not names:
        return None
    return (
        f"the model was compiled with the loss {', '.join(sorted(set(names)))}: the intervals "
        "are those of a squared-error fit (Gaussian noise) around its weights, not of that "
        "loss. For heavy-tailed noise, check them with `profile_likelihood` or refit with "
        "`loss=\"mse\"`."
    )


def _output_scale_warning(output_noise, noise_std):
    """A warning when the output channels' residuals differ in scale (their
    variances by more than `OUTPUT_SCALE_RATIO`), or `None`."""
    stds = {k: v for k, v in output_noise.items() if math.isfinite(v)}
    if len(stds) < 2 or min(stds.values()) <= 0:
        return None
    low, high = min(stds, key=stds.get), max(stds, key=stds.get)
    if (stds[high] / stds[low]) ** 2 <= _pkg.OUTPUT_SCALE_RATIO:
        return None
    # With one pooled noise level, an interval informed mostly by one output
    # is off by about the ratio of the pooled and that output's scales.
    wide, narrow = noise_std / stds[low], stds[high] / noise_std
    return (
        f"the residuals of the outputs differ in scale (std. {low} {stds[low]:.4g}, {high} "
        f"{stds[high]:.4g}) but share one noise level ({noise_std:.4g}): intervals informed "
        f"mostly by {low} may be up to {wide:.2g} times too wide, those informed mostly by "
        f"{high} up to {narrow:.2g} times too narrow. If the outputs' noise differs, pass "
        "per-value weights 1 / variance of each output (`sample_weight` of the targets' "
        "shapes, or a structure like the targets'; e.g. from `.output_noise_std`) and fit "
        "with the same weighting (e.g. `loss_weights` of separate outputs)."
    )


def constant_uncertainty(model, x, y=None, *, sample_weight=None, level=0.95, network="marginal",
                         prior_precision=None, method="auto", batch_size=None, profiles=None,
                         path=None, cg_tol=3e-3, cg_max_iter=500):
    """Standard errors, intervals and identifiability verdicts of the
    trainable physical constants of a fitted model.

    Gauss–Newton / Laplace approximation around the fitted weights, for a
    squared-error fit (Gaussian noise) whatever loss was compiled. With
    residuals `r = sqrt(sample_weight) (model(x) - y)` over the `n` observed
    values and the Jacobian `J = dr/d(raw constants c, network weights w)`:

    ```
    A = J^T J,   sigma^2 = RSS / (n - p_eff)
    marginal: Cov(c) = sigma^2 (A_cc - A_cw (A_ww + alpha sigma^2 I)^-1 A_wc)^-1
    fixed:    Cov(c) = sigma^2 A_cc^-1
    stderr = |g'(c)| sqrt(Cov_ii),   interval = g(c -/+ z sqrt(Cov_ii))
    ```

    where `g` is each constant's `to_physical` map (its constraint) and `z`
    the Student-t quantile of `level` with `n - p_eff` degrees of freedom
    (the normal quantile for large `n`; R's `confint.default` uses the
    normal one, which is too narrow for a handful of points). The covariance is computed in the raw
    (unconstrained) space, so the intervals respect the constraints.

    Network treatment:

    - `"marginal"` (default): the weights are integrated out under a
      Gaussian prior (Schur complement). Its precision `alpha` is
      `prior_precision` if a number is given; else, if the network has
      L2 weight decay `l2 ||w||^2` in its loss, `alpha = n l2 / sigma^2`
      (the same penalty as a prior; weights without it get `1`); else
      `1`, a standard-normal prior on each weight, unless the fitted
      weights of a layer have an RMS above `STANDARD_NORMAL_MAX_RMS = 3`:
      then the standard normal is contradicted by the fit and makes the
      layer rigid (an output layer for `y` in large numbers: the same fit
      with `y` in units 100 times larger could pass as "identified"), and
      the evidence is used instead (`prior_source` says so).
      `prior_precision="evidence"` always uses the evidence (MacKay's
      type-II maximum likelihood,
      `keras_hybrid.uncertainty.evidence_precision`), for the weights
      measured in units of their layer's RMS weight: the prior on a layer
      is `N(0, RMS^2 / alpha)`, with `alpha = gamma / ||w / RMS||^2` and
      `gamma = tr(A' (A' + alpha sigma^2 I)^-1)` the number of
      well-determined weights (`A' = R A_ww R`, `R` the RMS per weight),
      iterated with `sigma^2` to the fixed point. A network that fits
      with small weights gets a tight prior, one with large weights a
      loose one; a change of the units of `y` or of an input rescales
      the weights and their prior with them, so its intervals and
      verdicts do not depend on the units. (Not the default everywhere:
      after a short fit the weights are mostly their initialization's,
      and a small network then gets a tight prior: six points of a decay
      and a 49-weight network come out "weakly identified" with it,
      "not identified" with the standard normal.) The spectrum of `A'`
      is exact with the dense method and a stochastic Lanczos quadrature
      (`LANCZOS_PROBES = 4` probes of `LANCZOS_STEPS = 30` products)
      with conjugate gradients, where `sigma^2` then counts
      `p_c + gamma` parameters. A constant whose effect the network can
      mimic gets a wide interval: that is the honest answer for a
      flexible network.
    - `"fixed"`: conditional on the fitted network, as if its weights were
      known. Cheaper, and overconfident: it ignores that the network could
      take over part of a constant's effect (it is the `alpha -> inf`
      limit of the marginal).

    With no network (a physics-only fit) both are the classical
    nonlinear-least-squares result `s^2 (J^T J)^-1`, `s^2 = RSS/(n - p)`.

    Model selection (`path`, a `RadiusPath` of the same model and data):
    the Laplace interval measures the noise in the data, not how far the
    constant moves when the regularization changes. With `path`, each
    interval is widened to include the constant's range over the fits at
    the eligible radii (those whose validation loss the data cannot tell
    apart from the best; `RadiusPath.selection_ranges`) and the estimate:

    ```
    selection = [min(eligible values, estimate), max(eligible values, estimate)]
    interval  = [min(lo, selection_lo), max(hi, selection_hi)]
    ```

    The statistical part stays in `.statistical_intervals`, the selection
    part in `.selection_ranges`. A constant confounded with the network
    that stays put over two or more eligible radii (`path.stable`, or a
    range over them that lies inside its own statistical interval: it
    moves by less than the noise) is not downgraded for the confounding:
    every radius the data accept agrees on it. One that moves over them
    is at most "weakly identified": the regularization, not the data,
    decides it.

    Computation: `method="dense"` forms the full Jacobian (at most
    `MAX_DENSE_ENTRIES = 2e7` entries `n * (p_c + p_w)` and
    `MAX_DENSE_WEIGHTS = 2000` weights; a clear error beyond);
    `method="cg"` is matrix-free: the Jacobian columns `J_c` of the
    constants, products `J_w D^-1 J_w^T u` (a reverse-mode pass and a
    Jacobian–vector product) and conjugate gradients in data space,

    ```
    S = J_c^T (I + J_w D^-1 J_w^T)^-1 J_c,   D = alpha sigma^2 (per weight)
    ```

    which equals the Schur complement above but does not subtract two
    nearly equal numbers when the network can take over most of a
    constant's information (where a weight-space solve to a residual of
    1e-3 can leave `S` several times too large). Conjugate gradients
    approach `S` from below (Gauss quadrature), so an early stop widens
    the interval; the Gauss–Radau rule (the operator's eigenvalues are at
    least 1) bounds `S_ii` from above. They stop on the quantity reported,
    the interval width (proportional to `S_ii^(-1/2)`): when the bracket
    bounds it to within a factor `1 + cg_tol` of the converged width, or
    when it changed by less than `cg_tol` over the last 5 iterations (an
    estimate, which can stop on a plateau with `S_ii` too small: a wider
    interval; `.solver["cg"]` has the bracket to check). With
    the data in one chunk (`batch_size=None`) every product comes from one
    compiled function (`keras_hybrid._data_space`); `.solver["cg"]` holds
    the iterations and both bounds (`lower`, `upper`) per constant.
    `"auto"` picks dense when it fits. The noise variance
    counts the effective number of parameters
    `p_eff = tr(A (A + sigma^2 P)^-1)`: exactly with the dense method;
    in `"cg"` mode as `p_c` plus the network's well-determined weights
    `gamma = tr(A_ww (A_ww + sigma^2 D)^-1)` from a stochastic Lanczos
    quadrature (at most `LANCZOS_PROBES` probes of `LANCZOS_STEPS`
    products, fewer when `gamma` barely moves `sigma^2`; `A_ww` taken
    off the constants' columns).

    Verdicts (see `keras_hybrid.uncertainty.verdicts`): relative interval
    width `(hi - lo)/|estimate|` at most 1 (a standard error of about
    25 %) is "identified", at most 2
    "weakly identified", otherwise "not identified"; a constant that the
    network can mimic to more than 99 % (`S_ii / A_ii < 0.01`) is
    confounded with the network and at most "weakly identified" unless a
    `path` shows it stays put over the eligible radii (the local interval
    measures the noise, not how far the estimate moves with the
    regularization); with `path`, a constant that moves over the eligible
    radii is at most "weakly identified"; a near-null
    eigenvector (eigenvalue below 1e-3) of the constants' normalized
    marginal information names a confounded combination (a note); a flat
    profile (from `profiles`) makes the constant "not identified", and a
    profile that does not close within its domain, or that warns, at
    most "weakly identified"; a least-squares fit (no SAM, no L2 weight
    decay) that a Gauss-Newton step would move by more than one standard
    error is not at its minimum: said so, and its constants at most
    "weakly identified" (with a network the step refits the weights too,
    damped by their prior: `S^+ J_c^T (I + J_w D^-1 J_w^T)^-1 r`; the
    training is read from `model.sam`, so weights fitted with SAM and
    loaded into a model without it are checked as least squares); an
    estimate within 1 % of its bound is warned about (for a positive constant:
    below 1 % of its `scale`, the typical magnitude it was declared
    with).

    Args:
        model: a built Keras model holding `ScientificLayer`s.
        x: inputs (arrays, or a structure of arrays, first axis = samples),
            or a finite `tf.data.Dataset` of `(x, y)` or
            `(x, y, sample_weight)` batches (read once into arrays; `y`
            and `sample_weight` are then `None`).
        y: targets (same structure as the model's outputs).
        sample_weight: optional per-sample (or per-value) weights: one
            array for all outputs, or a structure like `y` (a weight per
            output, e.g. 1 / its noise variance).
            Defaults to `None` (all 1).
        level: confidence level of the intervals, in (0, 1). Defaults to
            `0.95`.
        network: `"marginal"` or `"fixed"`. Defaults to `"marginal"`.
        prior_precision: precision `alpha` of the Gaussian prior on the
            network weights (marginal mode): a finite number > 0 (the same for
            every weight), `"evidence"`, or `None` (the L2 weight decay,
            else the standard normal, or the evidence for weights too
            large for it; see above). Defaults to `None`.
        method: `"auto"`, `"dense"` or `"cg"`. Defaults to `"auto"`.
        batch_size: samples per Jacobian chunk. Defaults to `None` (all).
        profiles: optional list of `ProfileLikelihood` results; a flat
            profile makes its constant "not identified", and one that does
            not close within the constant's domain, or that warns (refits
            not converged), at most "weakly identified".
        path: optional `RadiusPath` (from `kh.radius_path` on the same
            model and data): widens the intervals by the constants' range
            over the eligible radii, and lets the path's stability enter
            the verdicts (see above). Defaults to `None`.
        cg_tol: conjugate gradients stop when the interval width from
            the constant's marginal information `S_ii` is bracketed to
            within this fraction, or changed by less than this fraction
            over the last 5 iterations (see above). Defaults to `3e-3`
            (on the pendulum hybrid the intervals then come out as wide as
            with the former rule, `S_ii` changing by less than 1e-3, at
            half its iterations; see benchmarks/README.md).
        cg_max_iter: conjugate-gradient iteration limit. Defaults to `500`.

    Returns:
        A `ConstantUncertainty` (`.estimates`, `.stderr`, `.intervals`,
        `.verdicts`, `.correlation`, `.noise_std`, `.warnings`; `print` it
        for a table).

    Raises:
        ValueError: on invalid settings, data that do not fit the model,
            too few values for the parameters, or a model that reproduces
            every observed value exactly (no residuals to estimate the
            noise from; values reproduced by construction, such as an
            echoed initial state, are left out first).

    Example:

    ```python
    model.fit(x, y, epochs=200)
    result = kh.constant_uncertainty(model, x, y)
    print(result)                    # table: estimate, std. err., interval, verdict
    result.intervals["w0"]           # (lo, hi) in rad/s
    ```

    Reference:
        Bates & Watts, *Nonlinear Regression Analysis and Its
        Applications* (1988); MacKay, Neural Computation 4 (1992);
        Daxberger et al., "Laplace Redux", arXiv:2106.14806.
    """
    start_time = time.perf_counter()
    evidence = _check_settings(level, network, prior_precision, method, path, cg_tol, cg_max_iter)
    x, y, sample_weight = arrays_from_dataset(x, y, sample_weight)
    entries = _check_model(model)
    constants = [v for _, v, _ in entries]
    weights = _network_variables(model) if network == "marginal" else []
    p_c = len(constants)
    p_w = int(sum(np.prod(v.shape) for v in weights))
    if method == "dense":
        # Refused before the data go through the model (minutes for a long ODE).
        _resolve_method(method, None, p_c, p_w)
    x, y = _checked_data(model, x, y)
    res = _Residuals(model, constants + weights, x, y, sample_weight, batch_size)
    n = res.n
    method = _resolve_method(method, n, p_c, p_w)
    blocks = _information_blocks(res, method, p_c, p_w)
    _check_derivatives(res, blocks.a_cc, [k for k, _, _ in entries])
    noise_var, p_eff, alpha, prior_source, evidence_info, evidence_warning = _noise_and_prior(
        model, res, weights, method, blocks, n, p_c, p_w, prior_precision, evidence)
    shift = alpha * noise_var
    info, solver, solves = _marginal_information(res, blocks, shift, method, p_c, p_w, cg_tol,
                                                 cg_max_iter, model, weights, x, y, sample_weight,
                                                 batch_size)
    cov, estimates, stderr, intervals, z = _physical_intervals(entries, info, noise_var, level, n, p_eff)
    names = [k for k, _, _ in entries]
    flat = {p.name: p.flat for p in (profiles or [])}
    statistical = list(intervals)
    intervals, selection, stable, within_noise = _widen_by_path(path, names, estimates, intervals)
    verdict, notes, warnings = _verdicts(entries, estimates, intervals, blocks.a_cc, info, flat, path,
                                         stable, evidence_warning, solver)
    unmoved = getattr(path, "unmoved", {}) if path is not None else {}
    for name in names:
        if unmoved.get(name):
            notes[name].append(
                f"{name} stayed at its initial value in every eligible fit of the path: its "
                "agreement over the radii shows only that the fits did not move it"
            )
    for name in within_noise:
        notes[name].append(
            f"{name} moves over the eligible radii by {path.spread[name]:.1%}, within its own "
            "statistical interval: the data cannot tell those values apart, so it counts as "
            "staying put"
        )
    _cap_by_open_profiles(verdict, notes, profiles, entries)
    if not _network_variables(model):
        _cap_unconverged(verdict, notes, warnings, names,
                         _gauss_newton_steps(res, blocks.a_cc, noise_var, p_c))
    elif p_w and _fit_by_least_squares(model, prior_source):
        _cap_unconverged(verdict, notes, warnings, names,
                         _marginal_gauss_newton_steps(res, blocks, info, shift, noise_var, p_c, solves),
                         with_network=True)
    loss_warning = _loss_warning(model)
    if loss_warning:
        warnings.append(loss_warning)
    output_noise = res.output_noise_std()
    scale_warning = _output_scale_warning(output_noise, math.sqrt(noise_var))
    if scale_warning:
        warnings.append(scale_warning)
    return ConstantUncertainty(
        names=names,
        estimates=dict(zip(names, estimates)),
        stderr=dict(zip(names, stderr)),
        intervals=dict(zip(names, intervals)),
        statistical_intervals=dict(zip(names, statistical)),
        selection_ranges=selection,
        verdicts=verdict,
        notes=notes,
        warnings=warnings,
        correlation=un.correlation(cov),
        raw_covariance=cov,
        noise_std=math.sqrt(noise_var),
        output_noise_std=output_noise,
        noise_variance=noise_var,
        n=n,
        exactly_reproduced=res.exactly_reproduced,
        effective_parameters=p_eff,
        level=float(level),
        network=network,
        method=method,
        prior_precision=float(np.mean(alpha)) if np.size(alpha) else None,
        prior_source=prior_source,
        units={k: s.unit for k, _, s in entries},
        information_fixed=blocks.a_cc,
        gram=blocks.gram if method == "dense" else None,
        shift=shift,
        quantile=z,
        information_marginal=info,
        evidence=evidence_info,
        solver=solver,
        seconds=time.perf_counter() - start_time,
    )
