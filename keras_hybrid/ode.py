"""Differentiable ODE integration for hybrid models.

Fixed-step explicit Runge-Kutta methods are driven by their Butcher tableau
and looped with bounded `tf.while_loop`s: time steps are
never unrolled in Python, so a traced (or XLA-compiled) training step stays
small whatever the number of steps. Adaptive and stiff solving goes through
`tfp.math.ode` (Dormand-Prince, BDF).
"""

import collections

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


def _check_times(t):
    t = np.asarray(t, dtype="float64")
    if t.ndim != 1 or t.size < 2:
        raise ValueError(
            "`t` must be a 1-D array of at least 2 time points. "
            f"Received: t with shape {t.shape}"
        )
    if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        raise ValueError(
            "`t` must be finite and strictly increasing. "
            f"Received: t={t.tolist()[:6]}{'...' if t.size > 6 else ''}"
        )
    return t


def odeint(func, y0, t, method="rk4", substeps=1, rtol=1e-6, atol=1e-8, constants=None):
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
        rtol: relative tolerance of adaptive methods. Defaults to `1e-6`.
        atol: absolute tolerance of adaptive methods. Defaults to `1e-8`.
        constants: optional dict of tensors forwarded to `func` as keyword
            arguments. Defaults to `None`.

    Returns:
        Tensor of shape `(..., len(t), n)`: the trajectory, `y0` first.

    Example:

    ```python
    t = np.linspace(0.0, 1.0, 11)
    y = odeint(lambda t, y: -y, np.ones((1, 1), "float32"), t)
    # y[0, -1, 0] ~ exp(-1)
    ```
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"`substeps` must be an integer >= 1. Received: substeps={substeps!r}")
    t = _check_times(t)
    constants = dict(constants or {})
    y0 = keras.ops.convert_to_tensor(y0)
    if method in ADAPTIVE_METHODS:
        return _odeint_tfp(func, y0, t, method, rtol, atol, constants)

    def vector_field(time, y):
        return func(time, y, **constants) if constants else func(time, y)

    tableau = TABLEAUS[method]
    dtype = y0.dtype
    starts = tf.constant(t[:-1], dtype=dtype)
    steps = tf.constant(np.diff(t) / substeps, dtype=dtype)

    def interval(y, start_and_step):
        start, dt = start_and_step
        if substeps == 1:
            return rk_step(vector_field, start, y, dt, tableau)

        def substep(i, y_sub):
            time = start + tf.cast(i, dtype) * dt
            return i + 1, rk_step(vector_field, time, y_sub, dt, tableau)

        # A static trip count keeps the loop differentiable under XLA.
        _, y_next = tf.while_loop(
            lambda i, _: i < substeps, substep, (0, y), maximum_iterations=substeps
        )
        return y_next

    # A while loop with a static trip count (`maximum_iterations`), which
    # XLA needs to differentiate through it; keras.ops.scan does not bound
    # its loop (TF 2.21), and tf.scan mutates the global variable scope,
    # which an exception raised mid-trace leaves corrupted.
    intervals = len(t) - 1
    trajectory = tf.TensorArray(dtype, size=len(t), element_shape=y0.shape).write(0, y0)

    def step(i, y, trajectory):
        y_next = interval(y, (starts[i], steps[i]))
        return i + 1, y_next, trajectory.write(i + 1, y_next)

    _, _, trajectory = tf.while_loop(
        lambda i, *_: i < intervals,
        step,
        (0, y0, trajectory),
        maximum_iterations=intervals,
    )
    # Stacked time first: (T, ..., n) -> (..., T, n).
    return _time_axis_second_to_last(trajectory.stack())


def _time_axis_second_to_last(ys):
    rank = len(ys.shape)
    perm = list(range(1, rank - 1)) + [0, rank - 1]
    return tf.transpose(ys, perm)


def _odeint_tfp(func, y0, t, method, rtol, atol, constants):
    from tensorflow_probability import math as tfm

    solver_cls = tfm.ode.DormandPrince if method == "dopri5" else tfm.ode.BDF
    solver = solver_cls(rtol=rtol, atol=atol)

    def ode_fn(time, y, **kwargs):
        return func(time, y, **kwargs) if kwargs else func(time, y)

    results = solver.solve(
        ode_fn,
        initial_time=tf.constant(t[0], y0.dtype),
        initial_state=y0,
        solution_times=tf.constant(t, y0.dtype),
        constants=constants,
    )
    return _time_axis_second_to_last(results.states)
