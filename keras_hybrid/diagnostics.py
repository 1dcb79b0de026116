"""How far to trust a fitted constant: intervals, profiles, verdicts.

Keras-facing wrappers over the linear algebra in `keras_hybrid.uncertainty`:
`constant_uncertainty` (Gauss–Newton / Laplace intervals, network
marginalized or fixed), `profile_likelihood` (refits with one constant
held fixed) and `report` (both, printed).
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_hybrid import uncertainty as un
from keras_hybrid._data_space import DataSpaceSolver
from keras_hybrid.layers import (
    ScientificLayer,
    _constant_spec,
    _keyed_constant_variables,
    is_physical_variable,
)

#: Largest `n_values * n_parameters` for which `method="dense"` builds the
#: full Jacobian (float32: 2e7 entries are 80 MB).
MAX_DENSE_ENTRIES = 20_000_000
#: Largest number of network weights for the dense method (an eigen-solve
#: of `p x p`).
MAX_DENSE_WEIGHTS = 2_000
#: Prior precision on the network weights when neither `prior_precision`
#: nor an L2 regularizer gives one: a standard-normal prior.
DEFAULT_PRIOR_PRECISION = 1.0
#: Lanczos iterations and random probes of the stochastic quadrature that
#: estimates the spectrum of `J_w^T J_w` for `prior_precision="evidence"`
#: with `method="cg"` (the dense method takes the exact eigenvalues).
LANCZOS_STEPS = 30
LANCZOS_PROBES = 4

#: With `method="cg"` and the data in one chunk (`batch_size=None`), take
#: every product of the solve (Jacobian columns, residuals, CG products)
#: from one compiled function (`keras_hybrid._data_space`); `False` takes
#: the separate products used with several chunks.
COMPILED_CG = True

_NETWORK_MODES = ("marginal", "fixed")
_METHODS = ("auto", "dense", "cg")


# -- model plumbing --------------------------------------------------------


def _constant_entries(model):
    """`(key, variable, spec)` of the trainable constants."""
    return [(k, v, s) for k, v, s in _keyed_constant_variables(model) if v.trainable]


def _network_variables(model):
    return [v for v in model.trainable_variables if not is_physical_variable(v)]


def _as_arrays(data, arg):
    if data is None:
        return None
    leaves = tf.nest.flatten(data)
    if not leaves:
        raise ValueError(f"`{arg}` must hold at least one array. Received: {arg}={data!r}")
    return tf.nest.map_structure(lambda a: np.asarray(a), data)


def _first_dim(data):
    return int(np.shape(tf.nest.flatten(data)[0])[0])


def _slice(data, start, stop):
    return tf.nest.map_structure(lambda a: a[start:stop], data)


def _weights_like(sample_weight, y):
    """Per-value weights with the structure and shapes of `y`."""
    if sample_weight is None:
        return tf.nest.map_structure(lambda a: np.ones(np.shape(a), "float32"), y)
    sw = np.asarray(sample_weight, "float32")
    if np.any(~np.isfinite(sw)) or np.any(sw < 0):
        raise ValueError(
            "`sample_weight` must be finite and >= 0. Received: sample_weight with "
            f"min={np.nanmin(sw)!r}"
        )

    def expand(a):
        w = sw.reshape(sw.shape + (1,) * (np.ndim(a) - sw.ndim))
        return np.broadcast_to(w, np.shape(a)).astype("float32")

    return tf.nest.map_structure(expand, y)


def _prior_precisions(model, variables, n, noise_var, prior_precision):
    """Per-weight prior precision: `prior_precision` if given; else from an
    L2 regularizer (`alpha = n l2 / sigma^2`, since a Keras loss is the mean
    over `n` values plus `l2 ||w||^2`); else `DEFAULT_PRIOR_PRECISION`.
    Returns `(vector, how)`."""
    sizes = [int(np.prod(v.shape)) for v in variables]
    if prior_precision is not None:
        return np.full(sum(sizes), float(prior_precision)), "given"
    l2 = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for attr, reg_attr in (("kernel", "kernel_regularizer"), ("bias", "bias_regularizer")):
            reg = getattr(layer, reg_attr, None)
            var = getattr(layer, attr, None) if reg is not None else None
            coef = getattr(reg, "l2", None)
            if var is not None and coef:
                l2[id(var)] = float(coef)
    if not l2:
        return np.full(sum(sizes), DEFAULT_PRIOR_PRECISION), "default (standard normal)"
    parts = [
        np.full(size, n * l2[id(v)] / noise_var if id(v) in l2 else DEFAULT_PRIOR_PRECISION)
        for v, size in zip(variables, sizes)
    ]
    return np.concatenate(parts), "from the L2 weight decay"


class _Residuals:
    """Weighted residuals `sqrt(w) (f(x) - y)` as a function of parameter
    tensors (fed through a `keras.StatelessScope`), and their Jacobian
    products."""

    def __init__(self, model, variables, x, y, sample_weight, batch_size):
        self.model = model
        self.variables = variables
        self.x, self.y = x, y
        self.w = _weights_like(sample_weight, y)
        self.size = _first_dim(x)
        self.batch_size = self.size if batch_size is None else int(batch_size)
        self.shapes = [tuple(v.shape) for v in variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.n = int(sum(np.count_nonzero(w) for w in tf.nest.flatten(self.w)))
        self._ggn = None

    def single_chunk(self):
        """Whether the data go through the model in one chunk."""
        return self.batch_size >= self.size

    def chunks(self):
        for start in range(0, self.size, self.batch_size):
            stop = min(start + self.batch_size, self.size)
            yield _slice(self.x, start, stop), _slice(self.y, start, stop), _slice(self.w, start, stop)

    def residual(self, params, x, y, w):
        mapping = list(zip(self.variables, params))
        with keras.StatelessScope(state_mapping=mapping):
            pred = self.model(x, training=False)
        parts = [
            tf.reshape(tf.sqrt(wi) * (tf.cast(p, "float32") - tf.cast(yi, "float32")), [-1])
            for p, yi, wi in zip(tf.nest.flatten(pred), tf.nest.flatten(y), tf.nest.flatten(w))
        ]
        return tf.concat(parts, 0)

    def params(self):
        return [tf.convert_to_tensor(v.value) for v in self.variables]

    def rss(self):
        params = self.params()
        return float(sum(float(tf.reduce_sum(tf.square(self.residual(params, *c)))) for c in self.chunks()))

    def _jvp(self, params, tangents, x, y, w):
        """`(r, J v, tape)`. `J v` by the double-VJP trick,
        `J v = d/du [(J^T u) . v]`: reverse mode only, since TensorFlow's
        forward-mode accumulator cannot pass the TensorArrays of the ODE
        loop."""
        size = sum(int(np.prod(np.shape(a))) for a in tf.nest.flatten(y))
        u = tf.zeros([size], "float32")
        with tf.GradientTape() as outer:
            outer.watch(u)
            with tf.GradientTape(persistent=True) as inner:
                inner.watch(params)
                r = self.residual(params, x, y, w)
            g = inner.gradient(r, params, output_gradients=u,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
            gv = tf.add_n([tf.reduce_sum(gi * ti) for gi, ti in zip(g, tangents)])
        jv = outer.gradient(gv, u, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        self._last_r = r
        return r, jv, inner

    def _compile(self, fn, second=None):
        """`fn(params, second, x, y, w)` as a `tf.function`, XLA-compiled
        when XLA can compile it (tried on the first chunk with `second`,
        by default zero tangents)."""
        try:
            compiled = tf.function(fn, jit_compile=True, reduce_retracing=True)
            params = self.params()
            chunk = next(self.chunks())
            if second is None:
                second = [tf.zeros_like(p) for p in params]
            compiled(params, second(chunk) if callable(second) else second, *chunk)
            return compiled
        except Exception:  # noqa: BLE001 - XLA cannot compile every model
            return tf.function(fn, reduce_retracing=True)

    def _tangents(self, v):
        tangents, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            tangents.append(tf.constant(np.reshape(v[start:start + size], shape), "float32"))
            start += size
        return tangents

    def jacobian_columns(self, indices):
        """Columns `J e_i` (data space, float64) for the flat parameter
        indices `indices`, by Jacobian-vector products (one pass over the
        data per column)."""

        def jvp(params, tangents, x, y, w):
            return self._jvp(params, tangents, x, y, w)[:2]

        if getattr(self, "_jvp_fn", None) is None:
            self._jvp_fn = self._compile(jvp)
        params = self.params()
        p = sum(self.sizes)
        columns = []
        for i in indices:
            e = np.zeros(p)
            e[i] = 1.0
            tangents = self._tangents(e)
            parts = []
            for chunk in self.chunks():
                _, jv = self._jvp_fn(params, tangents, *chunk)
                parts.append(jv.numpy().astype("float64"))
            columns.append(np.concatenate(parts))
        return columns

    def dense_gram(self):
        """`(J^T J, RSS)` from the full Jacobian, built column by column
        with forward-mode products (one pass over the data per parameter)."""
        j = np.stack(self.jacobian_columns(range(sum(self.sizes))), 1)
        return j.T @ j, self.rss()

    def _chunk_size(self, y):
        return sum(int(np.prod(np.shape(a))) for a in tf.nest.flatten(y))

    def data_product(self, u, scales):
        """`J D J^T u` for a data-space vector `u` (float64 in and out),
        `D = diag(scales)` over the parameters (flat, float64)."""
        if getattr(self, "_data_fn", None) is None:
            def product(params, inputs, x, y, w):
                vector, scale = inputs
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    r = self.residual(params, x, y, w)
                g = tape.gradient(r, params, output_gradients=vector,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
                tangents = [gi * si for gi, si in zip(g, scale)]
                return self._jvp(params, tangents, x, y, w)[1]

            def example(chunk):
                return (tf.zeros([self._chunk_size(chunk[1])], "float32"),
                        [tf.ones_like(p) for p in self.params()])

            self._data_fn = self._compile(product, example)
        params = self.params()
        scale = self._tangents(scales)
        out, start = [], 0
        for chunk in self.chunks():
            size = self._chunk_size(chunk[1])
            piece = tf.constant(u[start:start + size], "float32")
            out.append(self._data_fn(params, (piece, scale), *chunk).numpy().astype("float64"))
            start += size
        return np.concatenate(out)

    def _build_ggn(self):
        def ggn(params, tangents, x, y, w):
            _, jv, inner = self._jvp(params, tangents, x, y, w)
            return inner.gradient(self._last_r, params, output_gradients=tf.stop_gradient(jv),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)

        self._ggn = self._compile(ggn)

    def ggn_vector(self, v):
        """`J^T J v` for a flat vector `v` (float64 in and out)."""
        if self._ggn is None:
            self._build_ggn()
        params = self.params()
        tangents = self._tangents(v)
        total = np.zeros(sum(self.sizes))
        for chunk in self.chunks():
            grads = self._ggn(params, tangents, *chunk)
            total += np.concatenate([np.reshape(g.numpy(), -1) for g in grads]).astype("float64")
        return total


def _host_data_space_information(res, model, weights, x, y, sample_weight, batch_size,
                                 inverse_shift, p_c, cg_tol, cg_max_iter):
    """The data-space solve with the iteration on the host (one compiled
    product per iteration and chunk): `(S, solver info)`."""
    net_res = _Residuals(model, weights, x, y, sample_weight, batch_size)
    columns = res.jacobian_columns(range(p_c))

    def matvec(u):
        return u + net_res.data_product(u, inverse_shift)

    solves, infos = [], []
    for i in range(p_c):
        sol, info_i = un.conjugate_gradient(matvec, columns[i], tol=cg_tol,
                                            max_iter=cg_max_iter, quadratic="width")
        solves.append(sol)
        infos.append(info_i)
    info = np.stack(columns, 1).T @ np.stack(solves, 1)
    return 0.5 * (info + info.T), {"cg": infos, "compiled": False}


# -- result objects -------------------------------------------------------


class ConstantUncertainty:
    """Result of `constant_uncertainty`.

    Attributes:
        names: constant names (keys of the dicts below).
        estimates: `name -> physical value`.
        stderr: `name -> standard error` (delta method, physical units).
        intervals: `name -> (lo, hi)` at `level` (end points mapped through
            the constraint, so they respect it; with `path`, widened by the
            selection range).
        statistical_intervals: `name -> (lo, hi)`, the Laplace part alone.
        selection_ranges: `name -> (lo, hi)`, the range over the eligible
            radii of `path` (empty without `path`).
        evidence: with `prior_precision="evidence"`, the fixed point
            (`alpha`, `gamma`, `noise_variance`, `weight_sq_norm`,
            `iterations`, `converged`); else `None`.
        verdicts: `name -> "identified" | "weakly identified" | "not identified"`.
        notes: `name -> list of explanations` of the verdict.
        warnings: list of warning strings (e.g. an estimate at a bound).
        correlation: `(p, p)` correlation matrix of the raw constants, in
            the order of `names`.
        raw_covariance: `(p, p)` covariance of the raw constants.
        noise_std: residual standard deviation `s`.
        n: number of observed values.
        effective_parameters: parameters counted in `s^2 = RSS / (n - p)`.
        level, network, method, prior_precision, prior_source, units,
        seconds, solver: settings and bookkeeping.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __str__(self):
        pct = f"{self.level:.0%}"
        lines = [
            f"Constants ({self.network} network, {self.method}; noise std {self.noise_std:.4g} "
            f"over n={self.n} values, {self.effective_parameters:.1f} effective parameters)",
            f"{'constant':<12} {'estimate':>11} {'std. err.':>10} {pct + ' interval':>25}  {'unit':<8} verdict",
        ]
        for name in self.names:
            lo, hi = self.intervals[name]
            lines.append(
                f"{name:<12} {self.estimates[name]:>11.5g} {self.stderr[name]:>10.3g} "
                f"{'[' + format(lo, '.5g') + ', ' + format(hi, '.5g') + ']':>25}  "
                f"{self.units.get(name, ''):<8} {self.verdicts[name]}"
            )
        for name in self.names:
            if name in self.selection_ranges:
                (slo, shi), (tlo, thi) = self.selection_ranges[name], self.statistical_intervals[name]
                lines.append(
                    f"  {name}: statistical [{tlo:.5g}, {thi:.5g}], over the eligible radii "
                    f"[{slo:.5g}, {shi:.5g}]"
                )
        for name in self.names:
            for note in self.notes[name]:
                if "relative interval width" not in note:
                    lines.append(f"  note: {note}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)

    __repr__ = __str__

    def covers(self, truth):
        """`name -> bool`: whether each interval contains `truth[name]`."""
        return {k: self.intervals[k][0] <= v <= self.intervals[k][1] for k, v in truth.items()}

    def plot(self, ax=None, truth=None):
        """Interval bars per constant (relative to the estimate); needs
        matplotlib. Returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        for i, name in enumerate(self.names):
            est = self.estimates[name]
            lo, hi = self.intervals[name]
            scale = abs(est) or 1.0
            lo_r = max(lo / scale, -10.0) if math.isfinite(lo) else -10.0
            hi_r = min(hi / scale, 10.0) if math.isfinite(hi) else 10.0
            color = {"identified": "tab:green", "weakly identified": "tab:orange"}.get(
                self.verdicts[name], "tab:red")
            ax.plot([lo_r, hi_r], [i, i], color=color, lw=3)
            ax.plot([est / scale], [i], "ko")
            if truth and name in truth:
                ax.plot([truth[name] / scale], [i], "x", color="tab:blue", ms=10)
        ax.set_yticks(range(len(self.names)), [f"{n}\n{self.verdicts[n]}" for n in self.names])
        ax.set_xlabel("value / estimate")
        ax.set_title(f"{self.level:.0%} intervals ({self.network} network)")
        return ax


class ProfileLikelihood:
    """Result of `profile_likelihood`.

    Attributes:
        name: the profiled constant.
        values: grid of fixed values (sorted).
        rss: residual sum of squares after the refit at each value.
        loss: the final training loss of each refit.
        statistic: `n log(RSS / RSS_min)` per value.
        interval: `(lo, hi)` likelihood-ratio interval (`-inf`/`inf` where
            the profile does not cross the threshold within the grid).
        threshold: `chi2_1(level)`.
        flat: True if the whole grid lies inside the interval.
        estimate, rss_min, n, level, seconds.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __str__(self):
        lo, hi = self.interval
        rows = "\n".join(
            f"  {self.name} = {v:<10.5g} RSS = {r:.5g}   n log(RSS/RSS_min) = {s:.3g}"
            for v, r, s in zip(self.values, self.rss, self.statistic)
        )
        return (
            f"Profile of {self.name} (threshold {self.threshold:.3g} at {self.level:.0%}):\n{rows}\n"
            f"  interval [{lo:.5g}, {hi:.5g}]" + ("  (flat profile)" if self.flat else "")
        )

    __repr__ = __str__

    def plot(self, ax=None, truth=None):
        """The profile statistic against the fixed value; needs matplotlib."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        ax.plot(self.values, self.statistic, "o-", label=f"profile of {self.name}")
        ax.axhline(self.threshold, color="grey", ls="--", label=f"{self.level:.0%} threshold")
        ax.axvline(self.estimate, color="k", lw=0.8, label="estimate")
        if truth is not None:
            ax.axvline(truth, color="tab:blue", ls=":", label="truth")
        ax.set_xlabel(self.name)
        ax.set_ylabel("n log(RSS / RSS_min)")
        ax.legend()
        return ax


# -- public functions -------------------------------------------------------


def _check_choice(arg, value, choices):
    if value not in choices:
        raise ValueError(f"`{arg}` must be one of {choices}. Received: {arg}={value!r}")


def constant_uncertainty(model, x, y, *, sample_weight=None, level=0.95, network="marginal",
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
      Gaussian prior of precision `alpha` (Schur complement). `alpha` is
      `prior_precision` if given; else, if the network has L2 weight
      decay `l2 ||w||^2` in its loss, `alpha = n l2 / sigma^2` (the same
      penalty as a prior); else `1` (a standard-normal prior on each
      weight). `prior_precision="evidence"` chooses `alpha` (and
      `sigma^2`) by the evidence (MacKay's type-II maximum likelihood,
      `keras_hybrid.uncertainty.evidence_precision`):
      `alpha = gamma / ||w||^2` with `gamma = tr(A_ww (A_ww + alpha sigma^2 I)^-1)`
      the number of well-determined weights, iterated to the fixed
      point; a network that fits with small weights gets a tight prior,
      one with large weights a loose one. The spectrum of `A_ww` is exact
      with the dense method and a stochastic Lanczos quadrature
      (`LANCZOS_PROBES = 4` probes of `LANCZOS_STEPS = 30` products)
      with conjugate gradients, where `sigma^2` then counts
      `p_c + gamma` parameters. A constant whose effect the network can mimic gets a wide
      interval: that is the honest answer for a flexible network.
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
    that stays put over two or more eligible radii (`path.stable`) is not
    downgraded for the confounding: every radius the data accept agrees
    on it. One that moves over them is at most "weakly identified": the
    regularization, not the data, decides it.

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
    `"auto"` picks dense when it fits. In `"cg"` mode the
    noise variance counts only the constants as parameters
    (`p_eff = p_c`; `p_c + gamma` with the evidence prior), which
    underestimates `sigma^2` by at most a factor
    `(n - p_c - p_w) / (n - p_c)`; the dense method uses the effective
    number of parameters `p_eff = tr(A (A + sigma^2 P)^-1)`.

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
    profile
    (from `profiles`) makes the constant "not identified"; an estimate
    within 1 % of its bound is warned about.

    Args:
        model: a built Keras model holding `ScientificLayer`s.
        x: inputs (arrays, or a structure of arrays, first axis = samples).
        y: targets (same structure as the model's outputs).
        sample_weight: optional per-sample (or per-value) weights.
            Defaults to `None` (all 1).
        level: confidence level of the intervals, in (0, 1). Defaults to
            `0.95`.
        network: `"marginal"` or `"fixed"`. Defaults to `"marginal"`.
        prior_precision: precision `alpha` of the Gaussian prior on the
            network weights (marginal mode): a number > 0, `"evidence"`
            (chosen by the evidence), or `None` (see above). Defaults to
            `None`.
        method: `"auto"`, `"dense"` or `"cg"`. Defaults to `"auto"`.
        batch_size: samples per Jacobian chunk. Defaults to `None` (all).
        profiles: optional list of `ProfileLikelihood` results; a flat
            profile makes its constant "not identified".
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
    _check_choice("network", network, _NETWORK_MODES)
    _check_choice("method", method, _METHODS)
    un.normal_quantile(level)  # validates `level`
    evidence = isinstance(prior_precision, str) and prior_precision == "evidence"
    if prior_precision is not None and not evidence and not (
        isinstance(prior_precision, (int, float)) and not isinstance(prior_precision, bool)
        and prior_precision > 0
    ):
        raise ValueError(
            "`prior_precision` must be a number > 0, \"evidence\" or None. "
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
    if not getattr(model, "built", False):
        raise ValueError("`model` must be built (called or fitted) before `constant_uncertainty`.")
    entries = _constant_entries(model)
    if not entries:
        raise ValueError(
            "`model` has no trainable physical constants: nothing to estimate. "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    x, y = _as_arrays(x, "x"), _as_arrays(y, "y")
    if _first_dim(x) != _first_dim(y):
        raise ValueError(
            f"`x` and `y` must have the same number of samples. Received: {_first_dim(x)} and {_first_dim(y)}"
        )
    constants = [v for _, v, _ in entries]
    weights = _network_variables(model) if network == "marginal" else []
    p_c = len(constants)
    p_w = int(sum(np.prod(v.shape) for v in weights))
    res = _Residuals(model, constants + weights, x, y, sample_weight, batch_size)
    n = res.n
    if method == "auto":
        method = "dense" if (n * (p_c + p_w) <= MAX_DENSE_ENTRIES and p_w <= MAX_DENSE_WEIGHTS) else "cg"
    if method == "dense" and (n * (p_c + p_w) > MAX_DENSE_ENTRIES or p_w > MAX_DENSE_WEIGHTS):
        raise ValueError(
            f"`method='dense'` would build a Jacobian of n x p = {n} x {p_c + p_w} with {p_w} "
            f"network weights; the limits are {MAX_DENSE_ENTRIES} entries and "
            f"{MAX_DENSE_WEIGHTS} weights. Use method='cg' (matrix-free) or 'auto'. "
            f"Received: method={method!r}"
        )
    solver = {}
    data_space = None
    if method == "dense":
        if COMPILED_CG and not p_w and res.single_chunk():
            # No network: the columns and residuals from the one traced product.
            r, jc = DataSpaceSolver(res, p_c).columns()
            gram, rss = jc.T @ jc, float(r @ r)
        else:
            gram, rss = res.dense_gram()
        a_cc, a_cw, a_ww = gram[:p_c, :p_c], gram[:p_c, p_c:], gram[p_c:, p_c:]
    elif COMPILED_CG and res.single_chunk():
        # One compiled pass: the residuals and the constants' Jacobian columns.
        data_space = DataSpaceSolver(res, p_c)
        r, jc = data_space.columns()
        rss = float(r @ r)
        a_cc, a_cw, a_ww = jc.T @ jc, None, None
    else:
        rss = res.rss()
        cols = []
        for i in range(p_c):
            e = np.zeros(p_c + p_w)
            e[i] = 1.0
            cols.append(res.ggn_vector(e))
        cols = np.stack(cols, 1)
        a_cc, a_cw, a_ww = cols[:p_c], cols[p_c:].T, None
    # Noise variance (fixed point with the effective number of parameters).
    noise_var = un.noise_variance(rss, n, p_c)
    p_eff = float(p_c)
    evidence_info = None
    if evidence and p_w:
        if method == "dense":
            nodes, node_weights = np.linalg.eigvalsh(a_ww), None
        else:
            def ww_matvec(v):
                return res.ggn_vector(np.concatenate([np.zeros(p_c), v]))[p_c:]

            nodes, node_weights = un.lanczos_spectrum(ww_matvec, p_w, LANCZOS_STEPS, LANCZOS_PROBES)
        w_sq = float(sum(np.sum(np.square(keras.ops.convert_to_numpy(v.value).astype("float64")))
                         for v in weights))
        evidence_info = un.evidence_precision(nodes, node_weights, w_sq, rss, n, p_c)
        evidence_info["weight_sq_norm"] = w_sq
        prior_precision = evidence_info["alpha"]
        if method != "dense":
            noise_var = evidence_info["noise_variance"]
            p_eff = p_c + evidence_info["gamma"]
    alpha, prior_source = (np.zeros(0), "none") if not p_w else _prior_precisions(
        model, weights, n, noise_var, prior_precision)
    if method == "dense" and p_w:
        for _ in range(5):
            alpha, prior_source = _prior_precisions(model, weights, n, noise_var, prior_precision)
            p_eff = un.effective_parameters(gram, np.concatenate([np.zeros(p_c), alpha]), noise_var)
            noise_var = un.noise_variance(rss, n, p_eff)
    if evidence_info is not None and not evidence_info["converged"]:
        evidence_warning = (
            f"the evidence fixed point did not converge ({evidence_info['reason']}, "
            f"{evidence_info['iterations']} iterations): alpha = {evidence_info['alpha']:.3g} is its last value."
        )
    else:
        evidence_warning = None
    if evidence_info is not None:
        prior_source = (
            f"evidence ({evidence_info['gamma']:.1f} of {p_w} weights well determined, "
            f"||w||^2 = {evidence_info['weight_sq_norm']:.4g})"
        )
    if not math.isfinite(noise_var):
        raise ValueError(
            f"Too few observed values (n={n}) for {p_eff:.1f} effective parameters: "
            "no noise estimate. Give more data or fewer parameters."
        )
    shift = alpha * noise_var
    if not p_w:
        info = a_cc
    elif method == "dense":
        info = un.schur_information(a_cc, a_cw, a_ww, shift)
    else:
        # In data space, S = J_c^T (I + J_w D^-1 J_w^T)^-1 J_c with
        # D = alpha sigma^2 (per weight): no cancellation of two nearly equal
        # terms when the network can take over most of a constant's
        # information, and conjugate gradients approach S from below (an
        # early stop widens the interval).
        inverse_shift = 1.0 / np.broadcast_to(shift, (p_w,))
        if data_space is not None:
            data_space.set_inverse_shift(inverse_shift)
            solves, infos = [], []
            for i in range(p_c):
                # M = I + J_w D^-1 J_w^T has eigenvalues >= 1: a Gauss-Radau bracket.
                sol, info_i = un.conjugate_gradient(data_space.matvec, jc[:, i], tol=cg_tol,
                                                    max_iter=cg_max_iter, quadratic="width", eig_lower=1.0)
                solves.append(sol)
                infos.append(info_i)
            info = jc.T @ np.stack(solves, 1)
            info = 0.5 * (info + info.T)
            # The diagonal from CG's sum (b^T x can stall with float32 products).
            info[np.diag_indices(p_c)] = [i["quadratic"] for i in infos]
            solver = {"cg": infos, "compiled": True, "xla": data_space.xla, "calls": data_space.calls}
        else:
            info, solver = _host_data_space_information(
                res, model, weights, x, y, sample_weight, batch_size, inverse_shift, p_c,
                cg_tol, cg_max_iter)
    cov = un.covariance_from_information(info, noise_var)
    raw = [float(v.numpy()) for v in constants]
    raw_se = [math.sqrt(c) if math.isfinite(c) and c >= 0 else math.inf for c in np.diag(cov)]
    specs = [s for _, _, s in entries]
    names = [k for k, _, _ in entries]

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
    flat = {p.name: p.flat for p in (profiles or [])}
    statistical = list(intervals)
    selection, stable = {}, None
    if path is not None:
        ranges = path.selection_ranges()
        missing = [k for k in names if k not in ranges]
        if missing:
            raise ValueError(
                f"`path` has no values of the constants {missing}: it must come from the same "
                f"model. Received: path with constants {sorted(ranges)}"
            )
        stable = {k: bool(path.stable.get(k, False)) for k in names}
        for i, k in enumerate(names):
            s_lo, s_hi = min(ranges[k][0], estimates[i]), max(ranges[k][1], estimates[i])
            selection[k] = (s_lo, s_hi)
            intervals[i] = (min(intervals[i][0], s_lo), max(intervals[i][1], s_hi))
    verdict, notes, warnings = un.verdicts(
        names, estimates, intervals, a_cc, info, [s.constraint for s in specs], profile_flat=flat,
        path_stable=stable, path_eligible=None if path is None else list(path.eligible),
    )
    if evidence_warning:
        warnings.append(evidence_warning)
    for i in solver.get("cg", []):
        if not i["converged"]:
            warnings.append(
                f"conjugate gradients stopped after {i['iterations']} iterations at relative "
                f"residual {i['residual']:.2g} before the constant's information settled: the "
                "marginal interval is an upper bound on the width."
            )
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
        noise_variance=noise_var,
        n=n,
        effective_parameters=p_eff,
        level=float(level),
        network=network,
        method=method,
        prior_precision=float(np.mean(alpha)) if np.size(alpha) else None,
        prior_source=prior_source,
        units={k: s.unit for k, _, s in entries},
        information_fixed=a_cc,
        gram=gram if method == "dense" else None,
        shift=shift,
        quantile=z,
        information_marginal=info,
        evidence=evidence_info,
        solver=solver,
        seconds=time.perf_counter() - start_time,
    )


def _owner_layer(model, name):
    keyed = {k: v for k, v, _ in _keyed_constant_variables(model)}
    if name not in keyed:
        raise ValueError(
            f"Unknown constant `name`. The model's constants are {sorted(keyed)}. Received: name={name!r}"
        )
    variable = keyed[name]
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, ScientificLayer) and any(v is variable for v in layer._raw.values()):
            spec = _constant_spec(variable)
            return layer, spec.name
    raise ValueError(f"No ScientificLayer of the model owns constant {name!r}.")


def clone_for_refit(model):
    """A copy of `model` (architecture, weights and compile settings, with
    a fresh optimizer of the same configuration), for refits that must not
    touch the original. The equations must be registered serializable."""
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    clone.build_from_config(model.get_build_config()) if not clone.built else None
    clone.set_weights(model.get_weights())
    if getattr(model, "compiled", False) or getattr(model, "optimizer", None) is not None:
        fresh_compile(clone, model)
    return clone


def fresh_compile(model, like=None):
    """Recompiles `model` with the compile settings of `like` (default: its
    own) and a fresh optimizer cloned from the optimizer's config. Needed
    after changing which variables are trainable: a Keras 3 optimizer is
    built for a fixed variable list."""
    like = like or model
    config = like.get_compile_config()
    if config is None:
        raise ValueError(f"Model {like.name!r} is not compiled: compile it before refitting.")
    model.compile_from_config(config)


def profile_likelihood(model, name, values, x, y, *, epochs, sample_weight=None, level=0.95,
                       verbose=0, **fit_kwargs):
    """Profile likelihood of one constant: refit everything else with
    `name` held fixed at each of `values`.

    The refits run on a copy of `model` (the original is left untouched),
    warm-started from its fitted weights, with the model's own
    `train_step` (SAM included) and a fresh optimizer of the compiled
    configuration. The grid is walked outwards from the value closest to
    the estimate, each refit starting from the previous one. With the
    residual sum of squares `RSS(v)` after each refit over the `n`
    observed values,

    ```
    statistic(v) = n log(RSS(v) / RSS_min),   interval = {v : statistic(v) <= chi2_1(level)}
    ```

    (`RSS_min` is the smallest of the grid's and the free fit's). The
    interval is interpolated linearly; an end the profile never crosses is
    `-inf` / `inf`. A profile entirely below the threshold is "flat".

    Args:
        model: a fitted, compiled Keras model with `ScientificLayer`s.
        name: the constant to profile.
        values: 1-D grid of physical values (inside the constraint).
        x: inputs.
        y: targets.
        epochs: training epochs per refit.
        sample_weight: optional weights (used in the refits and the RSS).
        level: confidence level. Defaults to `0.95`.
        verbose: passed to `fit`. Defaults to `0`.
        **fit_kwargs: more `fit` arguments (`batch_size`, ...).

    Returns:
        A `ProfileLikelihood` (`.values`, `.rss`, `.statistic`, `.interval`,
        `.flat`; `.plot()`).

    Example:

    ```python
    prof = kh.profile_likelihood(model, "w0", np.linspace(0.8, 1.2, 7), y0, traj, epochs=50)
    prof.interval   # (lo, hi)
    ```

    Reference:
        Venzon & Moolgavkar, "A method for computing profile-likelihood-
        based confidence intervals", Applied Statistics 37 (1988);
        Raue et al., Bioinformatics 25 (2009).
    """
    start_time = time.perf_counter()
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be an integer >= 0. Received: epochs={epochs!r}")
    values = np.asarray(values, "float64").ravel()
    if values.size < 2 or not np.all(np.isfinite(values)):
        raise ValueError(f"`values` must hold at least 2 finite numbers. Received: values={values!r}")
    threshold = un.chi2_1_quantile(level)
    _owner_layer(model, name)
    x, y = _as_arrays(x, "x"), _as_arrays(y, "y")
    estimate = model_constants = None
    from keras_hybrid.layers import physical_constants

    model_constants = physical_constants(model)
    estimate = model_constants[name]
    clone = clone_for_refit(model)
    layer, local = _owner_layer(clone, name)
    layer.set_constant_trainable(local, False)
    fresh_compile(clone, model)
    base = clone.get_weights()

    def rss_of(m):
        res = _Residuals(m, [], x, y, sample_weight, None)
        return res.rss(), res.n

    rss_free, n = rss_of(model)
    order = np.argsort(np.abs(values - estimate))
    first = int(order[0])
    rss = np.full(values.size, np.nan)
    losses = np.full(values.size, np.nan)
    sorted_idx = np.argsort(values)
    pos = int(np.where(sorted_idx == first)[0][0])
    walks = [sorted_idx[pos:], sorted_idx[:pos][::-1]]
    for walk in walks:
        clone.set_weights(base)
        for i in walk:
            layer.set_constant(local, float(values[i]))
            if epochs:
                hist = clone.fit(x, y, sample_weight=sample_weight, epochs=epochs, verbose=verbose, **fit_kwargs)
                losses[i] = hist.history["loss"][-1]
            rss[i], _ = rss_of(clone)
    lo, hi, stat = un.profile_interval(values, rss, n, rss_min=rss_free, level=level)
    order = np.argsort(values)
    return ProfileLikelihood(
        name=name,
        values=values[order],
        rss=rss[order],
        loss=losses[order],
        statistic=stat[order],
        interval=(lo, hi),
        threshold=threshold,
        flat=bool(np.nanmax(stat) <= threshold),
        estimate=estimate,
        rss_min=min(rss_free, float(np.nanmin(rss))),
        n=n,
        level=float(level),
        seconds=time.perf_counter() - start_time,
    )


def report(model, x, y, *, profiles=None, truth=None, plot=None, **kwargs):
    """Prints the whole picture: the marginal intervals and verdicts, the
    network-fixed intervals for comparison, and any profiles; optionally
    saves a figure (interval bars and profile curves) to `plot`.

    Args:
        model: a fitted model.
        x: inputs.
        y: targets.
        profiles: optional list of `ProfileLikelihood`.
        truth: optional `name -> value` (simulations), marked in the plot
            and reported as covered or not.
        plot: optional path of a PNG to write (needs matplotlib).
        **kwargs: passed to `constant_uncertainty`.

    Returns:
        The marginal `ConstantUncertainty`.
    """
    marginal = constant_uncertainty(model, x, y, profiles=profiles, **kwargs)
    print(marginal)
    fixed_kwargs = {k: v for k, v in kwargs.items() if k not in ("network", "prior_precision")}
    fixed = constant_uncertainty(model, x, y, network="fixed", **fixed_kwargs)
    if fixed.names and _network_variables(model):
        print("Network held fixed (overconfident):")
        for k in fixed.names:
            lo, hi = fixed.intervals[k]
            print(f"  {k} = {fixed.estimates[k]:.5g}  [{lo:.5g}, {hi:.5g}]")
    for prof in profiles or []:
        print(prof)
    if truth:
        for k, covered in marginal.covers(truth).items():
            print(f"  truth {k} = {truth[k]:.5g} is {'inside' if covered else 'outside'} the interval")
    if plot:
        import matplotlib.pyplot as plt

        count = 1 + len(profiles or [])
        fig, axes = plt.subplots(1, count, figsize=(5 * count, 3.5), squeeze=False)
        marginal.plot(axes[0, 0], truth=truth)
        for ax, prof in zip(axes[0, 1:], profiles or []):
            prof.plot(ax, truth=(truth or {}).get(prof.name))
        fig.tight_layout()
        fig.savefig(plot, dpi=90)
        plt.close(fig)
    return marginal
