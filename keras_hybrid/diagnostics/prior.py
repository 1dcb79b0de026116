"""The noise variance and the prior precision of the network weights.

The prior precision comes from `prior_precision`, an L2 weight decay,
`DEFAULT_PRIOR_PRECISION`, or the evidence (MacKay's fixed point) on
weights measured in units of their layer's RMS weight, which makes it
independent of the units of the data; the default turns to the evidence
when the fitted weights are too large for the standard normal. The noise
variance counts the effective number of parameters.
"""

import math

import keras
import numpy as np

from keras_hybrid import diagnostics as _pkg
from keras_hybrid import uncertainty as un


def _l2_coefficients(model):
    """`id(variable) -> l2` for every kernel or bias with an L2 regularizer."""
    l2 = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for attr, reg_attr in (("kernel", "kernel_regularizer"), ("bias", "bias_regularizer")):
            reg = getattr(layer, reg_attr, None)
            var = getattr(layer, attr, None) if reg is not None else None
            coef = getattr(reg, "l2", None)
            if var is not None and coef:
                l2[id(var)] = float(coef)
    return l2


def _prior_precisions(model, variables, n, noise_var, prior_precision):
    """Per-weight prior precision: `prior_precision` if given (a number,
    or the evidence's per-weight vector); else from an L2 regularizer
    (`alpha = n l2 / sigma^2`, since a Keras loss is the mean over `n`
    values plus `l2 ||w||^2`); else `DEFAULT_PRIOR_PRECISION`.
    Returns `(vector, how)`."""
    sizes = [int(np.prod(v.shape)) for v in variables]
    if isinstance(prior_precision, np.ndarray):
        return prior_precision, "evidence"
    if prior_precision is not None:
        return np.full(sum(sizes), float(prior_precision)), "given"
    l2 = _l2_coefficients(model)
    if not l2:
        return np.full(sum(sizes), _pkg.DEFAULT_PRIOR_PRECISION), "default (standard normal)"
    parts = [
        np.full(size, n * l2[id(v)] / noise_var if id(v) in l2 else _pkg.DEFAULT_PRIOR_PRECISION)
        for v, size in zip(variables, sizes)
    ]
    return np.concatenate(parts), "from the L2 weight decay"


def _layer_scales(variables):
    """`(scale, layer_rms, values)`: per weight, the RMS of its layer's
    fitted weights (kernel and bias together), `layer -> RMS`, and the
    weights' values (flat, float64).

    The evidence's prior is `N(0, (RMS / sqrt(alpha))^2)` per layer: a
    change of the units of `y` (or of an input) rescales a layer's
    weights and its prior with them, so intervals and verdicts do not
    depend on the units (one precision for all weights ties the layers'
    priors together: the standard normal makes the output layer rigid
    for `y` in large numbers and loose for `y` in small ones).
    A layer whose weights are all zero takes the network's RMS."""
    values = [keras.ops.convert_to_numpy(v.value).astype("float64").ravel() for v in variables]
    layers = [v.path.rsplit("/", 1)[0] if "/" in v.path else v.path for v in variables]
    squares, counts = {}, {}
    for layer, w in zip(layers, values):
        squares[layer] = squares.get(layer, 0.0) + float(np.sum(np.square(w)))
        counts[layer] = counts.get(layer, 0) + w.size
    total = sum(counts.values())
    overall = math.sqrt(sum(squares.values()) / total) if total else 0.0
    layer_rms = {k: math.sqrt(squares[k] / counts[k]) or overall for k in squares}
    scale = np.concatenate([np.full(w.size, layer_rms[k]) for k, w in zip(layers, values)])
    return scale, layer_rms, np.concatenate(values)


def _weight_spectrum(res, method, a_ww, p_c, p_w, scale=None):
    """`(nodes, weights)` of `R J_w^T J_w R` (`R = diag(scale)`, default
    the identity): its eigenvalues (dense; weights `None`) or a
    stochastic Lanczos quadrature of them."""
    scale = np.ones(p_w) if scale is None else scale
    if method == "dense":
        return np.linalg.eigvalsh(scale[:, None] * a_ww * scale[None, :]), None

    def ww_matvec(v):
        return scale * res.ggn_vector(np.concatenate([np.zeros(p_c), scale * v]))[p_c:]

    return un.lanczos_spectrum(ww_matvec, p_w, _pkg.LANCZOS_STEPS, _pkg.LANCZOS_PROBES)


def _evidence_fixed_point(res, weights, method, a_ww, rss, n, p_c, p_w, p_fitted, scales=None):
    """`(evidence_info, precisions)`: the evidence fixed point
    (`un.evidence_precision`'s dict, with `weight_sq_norm` and
    `layer_rms`) for the weights in units of their layer's RMS
    (`w / RMS`; `alpha` is the precision in those units), and the
    per-weight precisions `alpha / RMS^2`. `p_fitted` constants count as
    fitted parameters; `scales` is `_layer_scales(weights)` if already
    computed."""
    scale, layer_rms, values = scales or _layer_scales(weights)
    if not np.all(scale > 0):
        raise ValueError(
            "`prior_precision=\"evidence\"` needs a network with weights that are not all zero "
            "(the evidence takes its scale from them). Pass a number for `prior_precision`. "
            f"Received: a network of {p_w} weights, all zero"
        )
    w_sq = float(np.sum(np.square(values / scale)))
    nodes, node_weights = _weight_spectrum(res, method, a_ww, p_c, p_w, scale)
    evidence_info = un.evidence_precision(nodes, node_weights, w_sq, rss, n, p_fitted)
    evidence_info["weight_sq_norm"] = w_sq
    evidence_info["layer_rms"] = layer_rms
    return evidence_info, evidence_info["alpha"] / np.square(scale)


def _layers_too_large_for_the_standard_normal(layer_rms):
    """`layer -> RMS weight` of the layers whose fitted weights have an RMS
    above `STANDARD_NORMAL_MAX_RMS`: for them a standard-normal prior is
    contradicted by the fit itself and makes the layer rigid (typically
    the output layer of a network whose `y` is in large numbers: the same
    fit in units 100 times larger would otherwise pass as "identified")."""
    return {k: v for k, v in layer_rms.items() if v > _pkg.STANDARD_NORMAL_MAX_RMS}


def _evidence_notes(evidence_info, p_w, prior_source):
    """`(prior_source, warning)`: the prior's description and a warning if the evidence did not converge."""
    if evidence_info is not None and not evidence_info["converged"]:
        evidence_warning = (
            f"the evidence fixed point did not converge ({evidence_info['reason']}, "
            f"{evidence_info['iterations']} iterations): alpha = {evidence_info['alpha']:.3g} is its last value."
        )
    else:
        evidence_warning = None
    if evidence_info is not None:
        prior_source = (
            f"evidence ({evidence_info['gamma']:.1f} of {p_w} weights well determined; "
            f"prior standard deviation {1 / math.sqrt(evidence_info['alpha']):.3g} times each "
            f"layer's RMS weight)"
        )
    return prior_source, evidence_warning


# One probe's estimate of `gamma` can be far below the truth when a few
# weights dominate (its spread is about `sqrt(2 gamma)`); against 1,000
# values or more that spread moves the noise estimate by well under 1 %.
# (A larger error is not the probes': with wide networks the float32
# products read rounding as information and overcount `gamma`, more so
# in one chunk of many values than in several: the noise estimate then
# errs on the large, conservative side.)
_FEW_PROBES_MIN_VALUES = 1000


def _count_well_determined_weights(res, a_cc, alpha, prior_source, noise_var, rss, n, p_c, p_w,
                                   p_fitted):
    """`(noise_var, gamma)` for the matrix-free path: the noise variance
    with the network's well-determined weights counted as parameters,
    `gamma = tr(A_ww (A_ww + sigma^2 D)^-1)` (`D` the prior precisions),
    from a stochastic Lanczos quadrature of `D^-1/2 A_ww D^-1/2 / sigma^2`.

    Taken at the first noise estimate; a prior that does not depend on
    the noise (given, or the default) scales with it, so the fixed point
    `sigma^2 = RSS / (n - p_fitted - gamma(sigma^2))` needs no new
    spectrum. An L2 prior's shift `alpha sigma^2 = n l2` does not move.
    With many values (`n >= _FEW_PROBES_MIN_VALUES`), probes are added
    until `gamma` moves the noise estimate by less than
    `NEGLIGIBLE_NOISE_SHIFT` (then its error does not matter either),
    else all `LANCZOS_PROBES` are spent.

    `A_ww` is taken off the constants' columns,
    `A_ww - A_wc A_cc^+ A_cw`: what the weights fit beyond the constants
    (the constants, without prior, are counted by `p_fitted`), so that
    `p_fitted + gamma` is the dense method's trace."""
    scale = 1.0 / np.sqrt(np.broadcast_to(alpha * noise_var, (p_w,)))
    unit = np.eye(p_c + p_w, p_c)
    a_wc = np.stack([res.ggn_vector(unit[:, i])[p_c:] for i in range(p_c)], 1)
    project = np.linalg.pinv(a_cc)

    def matvec(v):
        product = res.ggn_vector(np.concatenate([np.zeros(p_c), scale * v]))
        return scale * (product[p_c:] - a_wc @ (project @ product[:p_c]))

    moves_with_noise = not prior_source.startswith("from the L2")
    nodes, node_weights = [], []
    for probe in range(_pkg.LANCZOS_PROBES):
        probe_nodes, probe_weights = un.lanczos_spectrum(matvec, p_w, _pkg.LANCZOS_STEPS, 1, seed=probe)
        nodes.append(probe_nodes)
        node_weights.append(probe_weights)
        spectrum = np.concatenate(nodes), np.concatenate(node_weights) / (probe + 1)
        new_noise_var, gamma = _noise_counting_weights(spectrum, noise_var, moves_with_noise, rss, n,
                                                       p_fitted)
        if not math.isfinite(new_noise_var):
            break
        if n >= _FEW_PROBES_MIN_VALUES and new_noise_var <= noise_var * (1 + _pkg.NEGLIGIBLE_NOISE_SHIFT):
            break
    return new_noise_var, gamma


def _noise_counting_weights(spectrum, first_noise_var, moves_with_noise, rss, n, p_fitted):
    """`(noise_var, gamma)` at the fixed point
    `sigma^2 = RSS / (n - p_fitted - gamma(sigma^2))`, the spectrum taken at
    `first_noise_var` (`nan` when no degree of freedom is left)."""
    noise_var, gamma = first_noise_var, 0.0
    for _ in range(100):
        relative_shift = noise_var / first_noise_var if moves_with_noise else 1.0
        gamma = un.well_determined(*spectrum, relative_shift)
        new_noise_var = un.noise_variance(rss, n, p_fitted + gamma)
        if not (math.isfinite(new_noise_var) and new_noise_var > 0):
            return float("nan"), gamma
        converged = abs(new_noise_var - noise_var) <= 1e-10 * noise_var
        noise_var = new_noise_var
        if converged:
            break
    return noise_var, gamma


def _noise_and_prior(model, res, weights, method, blocks, n, p_c, p_w, prior_precision, evidence):
    """`(noise_var, p_eff, alpha, prior_source, evidence_info, evidence_warning)` of the fit."""
    rss = blocks.rss
    un.require_residuals(rss, n)
    # Noise variance (fixed point with the effective number of parameters).
    # Constants count by the rank of their information: one the data say
    # nothing about (or one of a confounded pair) fits nothing.
    p_fitted = un.information_rank(blocks.a_cc)
    noise_var = un.noise_variance(rss, n, p_fitted)
    p_eff = float(p_fitted)
    evidence_info = None
    too_large = scales = None
    if prior_precision is None and p_w and not _l2_coefficients(model):
        scales = _layer_scales(weights)
        too_large = _layers_too_large_for_the_standard_normal(scales[1])
        evidence = bool(too_large)
    if evidence and p_w:
        evidence_info, prior_precision = _evidence_fixed_point(
            res, weights, method, blocks.a_ww, rss, n, p_c, p_w, p_fitted, scales)
        if method != "dense":
            noise_var = evidence_info["noise_variance"]
            p_eff = p_fitted + evidence_info["gamma"]
    alpha, prior_source = (np.zeros(0), "none") if not p_w else _prior_precisions(
        model, weights, n, noise_var, prior_precision)
    if method != "dense" and p_w and evidence_info is None:
        noise_var, gamma = _count_well_determined_weights(
            res, blocks.a_cc, alpha, prior_source, noise_var, rss, n, p_c, p_w, p_fitted)
        p_eff = p_fitted + gamma
        alpha, prior_source = _prior_precisions(model, weights, n, noise_var, prior_precision)
        prior_source = f"{prior_source}; {gamma:.1f} of {p_w} weights well determined"
    if method == "dense" and p_w:
        for _ in range(5):
            alpha, prior_source = _prior_precisions(model, weights, n, noise_var, prior_precision)
            p_eff = un.effective_parameters(blocks.gram, np.concatenate([np.zeros(p_c), alpha]), noise_var)
            noise_var = un.noise_variance(rss, n, p_eff)
    prior_source, evidence_warning = _evidence_notes(evidence_info, p_w, prior_source)
    if too_large:
        shown = ", ".join(f"{layer} {rms:.3g}" for layer, rms in too_large.items())
        prior_source += (
            f"; instead of the standard normal, whose scale 1 the fitted weights exceed (RMS weight: "
            f"{shown}), so that the verdicts do not depend on the units of the data"
        )
    if not math.isfinite(noise_var):
        counted = ""
        if method != "dense" and p_w and p_eff >= n:
            # The count cannot exceed the values: an estimate of float32
            # products summed over many values (chunks sum them in float64).
            counted = (
                f" The matrix-free count of the network's well-determined weights ({p_eff - p_fitted:.1f}) "
                f"exceeds the {n} values, which is impossible: it is estimated from float32 Jacobian "
                "products, whose rounding over many values reads as information. Pass "
                "`batch_size=` (e.g. 1000: the products are then summed in float64), or "
                "`prior_precision=`."
            )
        raise ValueError(
            f"Too few observed values (n={n}) for {p_eff:.1f} effective parameters: "
            f"no noise estimate. Give more data or fewer parameters.{counted}"
        )
    return noise_var, p_eff, alpha, prior_source, evidence_info, evidence_warning
