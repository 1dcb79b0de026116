"""Differentiable ODE integration for hybrid models.

Fixed-step explicit Runge-Kutta methods are driven by their Butcher tableau
and looped with bounded `tf.while_loop`s: time steps are
never unrolled in Python, so a traced (or XLA-compiled) training step stays
small whatever the number of steps. Adaptive and stiff solving goes through
`tfp.math.ode` (Dormand-Prince, BDF).
"""

import collections
import contextlib

import keras
import numpy as np
import tensorflow as tf

ButcherTableau = collections.namedtuple("ButcherTableau", ["a", "b", "c", "order"])
ButcherTableau.__doc__ = """Explicit Runge-Kutta tableau.

`a[i]` holds the coefficients of stage `i` on stages `0..i-1`; `b` the
weights of the stages in the update; `c` the stage times (fractions of the
step); `order` the global order of accuracy.
"""

TABLEAUS = {
    "euler": ButcherTableau(a=[[]], b=[1.0], c=[0.0], order=1),
    "midpoint": ButcherTableau(a=[[], [0.5]], b=[0.0, 1.0], c=[0.0, 0.5], order=2),
    "heun": ButcherTableau(a=[[], [1.0]], b=[0.5, 0.5], c=[0.0, 1.0], order=2),
    "rk4": ButcherTableau(
        a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
        b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
        c=[0.0, 0.5, 0.5, 1.0],
        order=4,
    ),
}
ADAPTIVE_METHODS = ("dopri5", "bdf")
# The key under which variables' values travel with an adaptive solve's
# constants: not an identifier, so no constant can carry it.
_VARIABLE_VALUES = "<variables>"
METHODS = tuple(TABLEAUS) + ADAPTIVE_METHODS


def rk_step(func, t, y, dt, tableau):
    """One explicit Runge-Kutta step `y(t) -> y(t + dt)`.

    Args:
        func: vector field `func(t, y) -> dy/dt`.
        t: scalar time.
        y: state tensor (any shape).
        dt: scalar step size.
        tableau: a `ButcherTableau`.

    Returns:
        The state at `t + dt`.
    """
    stages = []
    for a_row, c_i in zip(tableau.a, tableau.c):
        y_stage = y
        for a_ij, k_j in zip(a_row, stages):
            if a_ij != 0.0:
                y_stage = y_stage + (dt * a_ij) * k_j
        stages.append(func(t + c_i * dt, y_stage))
    increment = 0.0
    for b_i, k_i in zip(tableau.b, stages):
        if b_i != 0.0:
            increment = increment + b_i * k_i
    return y + dt * increment


def check_time_dtype(t, arg):
    """Raises if `t` holds dates or durations (`datetime64`,
    `timedelta64`, pandas' too): as numbers they count nanoseconds or
    days, whatever the constants' time unit, and silently give a
    meaningless (often overflowing) solve; or strings or booleans, which
    NumPy would silently read as numbers."""
    dtype = np.asarray(t).dtype
    if dtype.kind in "mM":
        raise ValueError(
            f"`{arg}` must be numbers in the time unit of the constants, not dates or durations "
            f"(dtype {dtype}). Convert them, e.g. `({arg} - {arg}[0]) / np.timedelta64(1, 'h')` "
            f"for hours. Received: {arg} of dtype {dtype}"
        )
    if dtype.kind in "USb":
        raise TypeError(
            f"`{arg}` must hold numbers (times in the unit of the constants). Received: {arg} of "
            f"dtype {dtype} ({np.ravel(np.asarray(t))[:3].tolist()!r}...)"
        )


def _check_times(t, arg="t"):
    check_time_dtype(t, arg)
    t = np.asarray(t, dtype="float64")
    if t.ndim != 1 or t.size < 2:
        raise ValueError(
            f"`{arg}` must be a 1-D array of at least 2 time points. "
            f"Received: {arg} with shape {t.shape}"
        )
    if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        head = f"`{arg}` must be finite and strictly increasing. Received: "
        if t.size <= 6:
            raise ValueError(f"{head}{arg}={t.tolist()}")
        # Name the first offending place, which may be deep in a long grid.
        bad = np.flatnonzero(~np.isfinite(t))
        i = int(bad[0]) if bad.size else int(np.flatnonzero(~(np.diff(t) > 0))[0]) + 1
        where = f"{arg}[{i}]={float(t[i])!r}"
        if not bad.size:
            where += f" after {arg}[{i - 1}]={float(t[i - 1])!r}"
        raise ValueError(f"{head}{arg} with {where} ({t.size} points: {t[:3].tolist()}...)")
    return t


def time_resolution_note(t, substeps, max_step, dtype):
    """`None`, or a sentence saying that `dtype` resolves the times `t` too
    coarsely for the solver's steps (more than 1e-2 of the shortest step)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        return None
    shortest = float(np.min(np.diff(t) / _step_counts(t, substeps, max_step)))
    latest = float(np.max(np.abs(t)))
    resolution = float(np.spacing(dtype.type(latest)))
    if resolution <= 1e-2 * shortest:
        return None
    # Shifting helps only when the grid is far from 0 relative to its span.
    shifted_resolution = float(np.spacing(dtype.type(float(np.max(t) - np.min(t)))))
    remedy_shift = ("Shift the times to start near 0 (e.g. `times - times[0]`, and the same origin "
                    "in the equation).")
    remedy_precision = ("The times already span that range from near 0: compute in float64 "
                        "(`dtype=\"float64\"` on the layer, or `keras.config.set_floatx(\"float64\")`), "
                        "or sample less finely.")
    if dtype == np.float64:
        # Nothing finer to compute in: two times this close are one time.
        remedy_precision = ("Times this close are the same time recorded twice (e.g. `3 * 0.1` and "
                            "`0.3`): merge them (`kh.common_time_grid` does), or sample less finely.")
    return (
        f"In {dtype.name} a time near {latest:.6g} is resolved only to {resolution:.3g}, "
        f"against solver steps of {shortest:.3g}: an equation or a correction that reads `t` "
        "sees it rounded by that much (autonomous equations are unaffected). "
        + (remedy_shift if shifted_resolution <= 1e-2 * shortest else remedy_precision)
    )


def check_max_step(max_step, method):
    """Validates a `max_step` argument: `None` or a positive, finite number
    (fixed-step methods only)."""
    if max_step is None:
        return None
    if isinstance(max_step, bool) or not isinstance(max_step, (int, float, np.number)) or not (
            np.isfinite(max_step) and max_step > 0):
        raise ValueError(f"`max_step` must be None or a number > 0. Received: max_step={max_step!r}")
    if method in ADAPTIVE_METHODS:
        raise ValueError(
            f"`max_step` applies to the fixed-step methods {tuple(TABLEAUS)}; adaptive methods "
            f"choose their own steps. Received: max_step={max_step!r} with method={method!r}"
        )
    return float(max_step)


def _step_counts(t, substeps, max_step):
    """Solver steps per observation interval: `substeps`, or more where an
    interval is longer than `substeps * max_step`."""
    dt = np.diff(t)
    counts = np.full(dt.shape, substeps, np.int64)
    if max_step is not None:
        # The small slack keeps 0.1 / 0.05 at 2 steps despite rounding.
        counts = np.maximum(counts, np.ceil(dt / max_step - 1e-9).astype(np.int64))
    if counts.size and counts.max() > _MAX_STEPS_PER_INTERVAL:
        i = int(np.argmax(counts))
        raise ValueError(
            f"`max_step`={max_step!r} needs {int(counts[i])} solver steps for the interval "
            f"from t={float(t[i])!r} to t={float(t[i + 1])!r}; at most {_MAX_STEPS_PER_INTERVAL} are "
            "allowed per interval. Give a larger `max_step`, or more observation times there."
        )
    return counts


# Step counts are int32 in the loops.
_MAX_STEPS_PER_INTERVAL = 2**31 - 1


class _Schedule:
    """Step sizes and counts per interval. With one count for every
    interval the loops take it as a Python int (the same ops as before
    `max_step` existed); otherwise each interval reads its own count and
    the inner loop is bounded by the largest."""

    def __init__(self, t, substeps, max_step, dtype):
        counts = _step_counts(t, substeps, max_step)
        self.starts = tf.constant(t[:-1], dtype=dtype)
        self.steps = tf.constant(np.diff(t) / counts, dtype=dtype)
        self.uniform = bool(np.all(counts == counts[0]))
        self.most = int(counts.max())
        self.counts = None if self.uniform else tf.constant(counts, tf.int32)

    def interval(self, vector_field, i, y, tableau):
        count = None if self.uniform else self.counts[i]
        return _rk_interval(vector_field, self.starts[i], y, self.steps[i], tableau, self.most, count)


def odeint(
    func,
    y0,
    t,
    method="rk4",
    substeps=1,
    max_step=None,
    rtol=1e-6,
    atol=1e-8,
    constants=None,
    checkpoint=None,
    variables=None,
):
    """Integrates `dy/dt = func(t, y)` and returns `y` at the time points `t`.

    Args:
        func: vector field `func(t, y) -> dy/dt`, written with `keras.ops`,
            or `func(t, y, **constants)` when `constants` is given (adaptive
            methods pass `constants` to TFP so their gradients are exact).
        y0: initial state, shape `(..., n)`, at time `t[0]`.
        t: 1-D increasing sequence of time points (Python/NumPy values).
        method: one of `"euler"`, `"midpoint"`, `"heun"`, `"rk4"` (fixed
            step) or `"dopri5"`, `"bdf"` (adaptive, through
            `tfp.math.ode`). Defaults to `"rk4"`.
        substeps: fixed-step methods take this many equal steps between
            consecutive time points. Defaults to `1`.
        max_step: fixed-step methods only: `None`, or the longest step.
            An interval between time points longer than `substeps *
            max_step` is split into `ceil(dt / max_step)` equal steps, so
            that unevenly spaced observations (a long gap among short
            ones) are integrated as accurately as the short intervals.
            Defaults to `None` (`substeps` steps in every interval).
        rtol: relative tolerance of adaptive methods. Defaults to `1e-6`.
        atol: absolute tolerance of adaptive methods. Defaults to `1e-8`.
        constants: optional dict of tensors forwarded to `func` as keyword
            arguments. Defaults to `None`.
        checkpoint: fixed-step methods only: `None` (backpropagate through
            every stored step) or an integer `k >= 1`, the number of
            intervals between consecutive time points `t` per checkpointed
            segment. The forward pass then keeps only the state at segment
            starts (and the returned trajectory); the backward pass
            re-integrates each segment to get its gradient. Memory of the
            intermediate stage values grows with `k` instead of `len(t)`
            (about `sqrt(len(t))` minimizes the total) at the cost of one
            more forward integration. Defaults to `None`.
        variables: with `checkpoint` or an adaptive method, the Keras
            variables that `func` reads (e.g. `correction.variables`).
            Their current values (also the perturbed values inside a
            `keras.StatelessScope`, as in a SAM step) are passed to each
            segment, or to TFP's solve, explicitly, so that their gradients
            are exact. Gradients flow to `y0`, `constants`,
            `variables` and to `tf.Variable`s read by `func`; any other
            tensor that `func` captures is treated as a constant in the
            backward pass: pass it through `constants` if it needs a
            gradient. Defaults to `None`.

    Returns:
        Tensor of shape `(..., len(t), n)`: the trajectory, `y0` first.

    Checkpointing computes the same numbers as the plain loop (it runs the
    same steps), so its gradients equal the plain ones to rounding; it does
    not apply to the adaptive methods, whose gradients come from TFP's
    adjoint solve (memory constant in the trajectory length, but one
    backward ODE solve per step and gradients exact only to the solver's
    tolerance). Random layers whose seed states are among `variables`
    (Keras's Dropout, GaussianNoise...) draw from seeds fixed per interval:
    new masks at every interval and call, the same ones when a segment is
    integrated again; other random ops in `func` draw again in the
    recomputation. State updates made by `func` (BatchNorm statistics)
    inside a segment are dropped.

    Example:

    ```python
    t = np.linspace(0.0, 1.0, 11)
    y = odeint(lambda t, y: -y, np.ones((1, 1), "float32"), t)
    # y[0, -1, 0] ~ exp(-1)
    y = odeint(lambda t, y: -y, np.ones((1, 1), "float32"), t, checkpoint=3)
    # the same values; gradients recompute segments of 3 intervals
    ```
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"`substeps` must be an integer >= 1. Received: substeps={substeps!r}")
    t = _check_times(t)
    max_step = check_max_step(max_step, method)
    checkpoint = check_checkpoint(checkpoint)
    if checkpoint is not None and method in ADAPTIVE_METHODS:
        raise ValueError(
            "`checkpoint` applies to the fixed-step methods "
            f"{tuple(TABLEAUS)}; adaptive methods differentiate through TFP's adjoint "
            f"solve. Received: checkpoint={checkpoint!r} with method={method!r}"
        )
    variables = list(variables or [])
    if variables and checkpoint is None and method not in ADAPTIVE_METHODS:
        raise ValueError(
            "`variables` is only used with `checkpoint` or an adaptive method "
            f"{ADAPTIVE_METHODS}. Received: variables with {len(variables)} entries, "
            f"checkpoint=None and method={method!r}"
        )
    constants = dict(constants or {})
    y0 = keras.ops.convert_to_tensor(y0)
    if method in ADAPTIVE_METHODS:
        return _odeint_tfp(func, y0, t, method, rtol, atol, constants, variables)
    if checkpoint is not None:
        return _odeint_checkpointed(
            func, y0, t, TABLEAUS[method], substeps, constants, checkpoint, variables, max_step
        )

    def vector_field(time, y):
        return func(time, y, **constants) if constants else func(time, y)

    tableau = TABLEAUS[method]
    dtype = y0.dtype
    schedule = _Schedule(t, substeps, max_step, dtype)

    # A while loop with a static trip count (`maximum_iterations`), which
    # XLA needs to differentiate through it; keras.ops.scan does not bound
    # its loop (TF 2.21), and tf.scan mutates the global variable scope,
    # which an exception raised mid-trace leaves corrupted.
    intervals = len(t) - 1
    trajectory = tf.TensorArray(dtype, size=len(t), element_shape=y0.shape).write(0, y0)

    def step(i, y, trajectory):
        y_next = schedule.interval(vector_field, i, y, tableau)
        return i + 1, y_next, trajectory.write(i + 1, y_next)

    _, _, trajectory = tf.while_loop(
        lambda i, *_: i < intervals,
        step,
        (0, y0, trajectory),
        maximum_iterations=intervals,
    )
    # Stacked time first: (T, ..., n) -> (..., T, n).
    return _time_axis_second_to_last(trajectory.stack())


def _rk_interval(vector_field, start, y, dt, tableau, substeps, count=None):
    """One observation interval: `substeps` RK steps of size `dt` from
    `start`, or `count` (a tensor, at most `substeps`) of them."""
    if substeps == 1:
        return rk_step(vector_field, start, y, dt, tableau)

    def substep(i, y_sub):
        time = start + tf.cast(i, y.dtype) * dt
        return i + 1, rk_step(vector_field, time, y_sub, dt, tableau)

    # A static bound on the trip count keeps the loop differentiable under XLA.
    limit = substeps if count is None else count
    _, y_next = tf.while_loop(
        lambda i, _: i < limit, substep, (0, y), maximum_iterations=substeps
    )
    return y_next


def check_checkpoint(checkpoint):
    """Validates a `checkpoint` argument: `None` or an integer >= 1."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer)) or checkpoint < 1:
        raise ValueError(
            f"`checkpoint` must be None or an integer >= 1. Received: checkpoint={checkpoint!r}"
        )
    return int(checkpoint)


def _odeint_checkpointed(func, y0, t, tableau, substeps, constants, k, variables, max_step=None):
    """The fixed-step loop in segments of `k` intervals, each under a custom
    gradient that re-integrates the segment in the backward pass.

    Everything a segment differentiates is passed to it explicitly: the
    segment start state, the constants and the values of `variables`
    (remapped inside the segment through a `keras.StatelessScope`, so a
    perturbed value given by an outer scope is the one differentiated).
    """
    dtype = y0.dtype
    names = sorted(constants)
    constant_values = [tf.convert_to_tensor(constants[name]) for name in names]
    seed_states = [v for v in variables if is_seed_state(v)]
    variables = [v for v in variables if not is_seed_state(v)]
    variable_values = [tf.cast(tf.convert_to_tensor(v.value), v.dtype) for v in variables]
    seed_values = [tf.convert_to_tensor(v.value) for v in seed_states]
    schedule = _Schedule(t, substeps, max_step, dtype)
    intervals = len(t) - 1
    k = min(k, intervals)
    # Each random layer draws once per evaluation of `func`: room for all
    # of an interval's draws before the next interval's seeds.
    stride = max(SEED_STRIDE, schedule.most * len(tableau.b))

    def seeds_of(interval):
        # Random layers (dropout) draw from a seed fixed by the interval:
        # new masks at every interval and call, the same ones when the
        # backward pass integrates the segment again.
        offset = tf.stack([tf.constant(0, tf.int64), tf.cast(interval, tf.int64) * stride])
        return [(v, value + tf.cast(offset, value.dtype)) for v, value in zip(seed_states, seed_values)]

    def integrate(first, length, y, const_vals, var_vals):
        """States after each of `length` intervals from interval `first`:
        shape `(length, ..., n)`."""

        def vector_field(time, state):
            if constants:
                return func(time, state, **dict(zip(names, const_vals)))
            return func(time, state)

        out = tf.TensorArray(dtype, size=length, element_shape=y.shape)

        def step(j, y_j, out):
            mapping = list(zip(variables, var_vals)) + seeds_of(first + j)
            with keras.StatelessScope(state_mapping=mapping) if mapping else contextlib.nullcontext():
                y_next = schedule.interval(vector_field, first + j, y_j, tableau)
            return j + 1, y_next, out.write(j, y_next)

        _, _, out = tf.while_loop(
            lambda j, *_: j < length, step, (0, y, out), maximum_iterations=length
        )
        return out.stack()

    n_const = len(constant_values)

    def segment(first, length, y):
        @tf.custom_gradient
        def checkpointed(y, *flat):
            const_vals, var_vals = list(flat[:n_const]), list(flat[n_const:])
            ys = integrate(first, length, y, const_vals, var_vals)

            def grad_fn(dys, variables=None):
                tf_variables = list(variables or [])
                sources = [y] + const_vals + var_vals
                with tf.GradientTape() as tape:
                    tape.watch(sources)
                    ys_again = integrate(first, length, y, const_vals, var_vals)
                grads = tape.gradient(
                    ys_again,
                    sources + tf_variables,
                    output_gradients=dys,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                return grads[: len(sources)], grads[len(sources):]

            return ys, grad_fn

        return checkpointed(y, *constant_values, *variable_values)

    n_segments, remainder = divmod(intervals, k)
    blocks = tf.TensorArray(dtype, size=n_segments, element_shape=(k,) + tuple(y0.shape))

    def body(i, y, blocks):
        ys = segment(i * k, k, y)
        return i + 1, ys[-1], blocks.write(i, ys)

    # The backward loop inherits `parallel_iterations` (see SEGMENTS_IN_FLIGHT).
    _, y_last, blocks = tf.while_loop(
        lambda i, *_: i < n_segments, body, (0, y0, blocks), maximum_iterations=n_segments,
        parallel_iterations=SEGMENTS_IN_FLIGHT,
    )
    stacked = blocks.stack()  # (n_segments, k, ..., n)
    merged = tf.reshape(stacked, tf.concat([[n_segments * k], tf.shape(y0)], axis=0))
    pieces = [y0[None], tf.ensure_shape(merged, (n_segments * k,) + tuple(y0.shape))]
    if remainder:
        pieces.append(segment(n_segments * k, remainder, y_last))
    # The next call draws past every interval's seeds.
    for v, value in seeds_of(intervals):
        v.assign(value)
    return _time_axis_second_to_last(tf.concat(pieces, axis=0))


#: Segments of a checkpointed solve that its backward pass re-integrates
#: at a time (the segment loop's `parallel_iterations`, which its gradient
#: loop inherits). TensorFlow's default, 10, re-integrated up to ten
#: segments ahead of the gradient that needs them, each holding its stage
#: values; 1 overlaps nothing, which is slower; 2 overlaps the next
#: segment's re-integration with this one's backward pass. Measured by
#: `python benchmarks/long_trajectories.py --part segments` (figures in
#: benchmarks/README.md).
SEGMENTS_IN_FLIGHT = 2

#: Seed-counter values reserved per interval for the random layers of a
#: checkpointed solve, at least (a random layer draws once per stage of
#: every step: more when an interval takes more than that).
SEED_STRIDE = 4096


def is_seed_state(variable):
    """Whether `variable` is the state of a Keras `SeedGenerator` (the
    random draws of Dropout, GaussianNoise, ...)."""
    return str(variable.path).split("/")[-1] == "seed_generator_state"


def _time_axis_second_to_last(ys):
    rank = len(ys.shape)
    perm = list(range(1, rank - 1)) + [0, rank - 1]
    return tf.transpose(ys, perm)


def _odeint_tfp(func, y0, t, method, rtol, atol, constants, variables=()):
    """TFP's adaptive solve. The values of `variables` travel with the
    constants: TFP's adjoint differentiates only its inputs and the
    `tf.Variable`s it sees read, so a value that replaces a variable (the
    perturbed weights of a SAM step, inside a `keras.StatelessScope`)
    would otherwise get no gradient."""
    from tensorflow_probability import math as tfm

    solver_cls = tfm.ode.DormandPrince if method == "dopri5" else tfm.ode.BDF
    solver = solver_cls(rtol=rtol, atol=atol)
    # Seed states are not differentiable (TFP's adjoint would try); random
    # layers are refused in training with these methods (`ODELayer`).
    variables = [v for v in variables if not is_seed_state(v)]
    if variables:
        constants = dict(constants)
        constants[_VARIABLE_VALUES] = [
            tf.cast(tf.convert_to_tensor(v.value), v.dtype) for v in variables
        ]

    # TFP steps from its initial time in the state's dtype: far from 0 a
    # float32 time cannot resolve the steps (t0 = 1e6 gave errors of 0.27
    # on an oscillator, larger t0 looped forever). It integrates from 0 on
    # the grid shifted in float64; `func` sees the true time.
    origin = float(t[0])

    def ode_fn(time, y, **kwargs):
        if origin:
            time = time + tf.constant(origin, time.dtype)
        values = kwargs.pop(_VARIABLE_VALUES, None)
        scope = (contextlib.nullcontext() if values is None
                 else keras.StatelessScope(state_mapping=list(zip(variables, values))))
        with scope:
            return func(time, y, **kwargs) if kwargs else func(time, y)

    results = solver.solve(
        ode_fn,
        initial_time=tf.constant(0.0, y0.dtype),
        initial_state=y0,
        solution_times=tf.constant(t - origin, y0.dtype),
        constants=constants,
    )
    return _time_axis_second_to_last(results.states)
