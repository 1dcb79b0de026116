"""Trajectories observed at their own times, on the one time grid of an
`ODELayer`.

An `ODELayer` integrates every trajectory over the same `times`. Subjects of
a study are rarely sampled at the same moments (a patient seen at 0.5 h,
another at 0.6 h), so `common_time_grid` puts them on the union of their
times: the targets at the times a trajectory was not observed are filled
with zeros and get weight 0, which `fit`, `evaluate`, `radius_path` and
`constant_uncertainty` all take as `sample_weight` (one weight per
trajectory and time). The fit then sees each observation once, at its own
time, and nothing else.
"""

import collections

import numpy as np

from keras_hybrid.ode import check_time_dtype

ObservationGrid = collections.namedtuple("ObservationGrid", ["times", "targets", "weights"])
ObservationGrid.__doc__ = """The union time grid of `common_time_grid`.

Attributes:
    times: 1-D float array, increasing: the `times` of the `ODELayer`.
    targets: `(trajectories, len(times), *state)` array, the observations
        at their times and 0 elsewhere.
    weights: `(trajectories, len(times))` array, 1 where observed and 0
        elsewhere: `sample_weight` of `fit`, `evaluate` and the
        diagnostics.
"""


def _checked_trajectory(i, t, v):
    check_time_dtype(t, f"times[{i}]")
    try:
        t = np.asarray(t, "float64")
    except (TypeError, ValueError):
        raise TypeError(f"`times[{i}]` must hold numbers. Received: times[{i}]={t!r}") from None
    v = np.asarray(v)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(
            f"`times[{i}]` must be a non-empty 1-D array of time points. Received: shape {t.shape}"
        )
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError(
            f"`times[{i}]` must be finite and strictly increasing. Received: times[{i}]={t.tolist()!r}"
        )
    if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
        raise TypeError(
            f"`values[{i}]` must hold numbers. Received: values[{i}] of dtype {v.dtype} "
            f"({np.ravel(v)[:3].tolist()!r}...)"
        )
    if v.ndim == 0 or v.shape[0] != t.size:
        raise ValueError(
            f"`values[{i}]` must hold one observation per time point of `times[{i}]` ({t.size}). "
            f"Received: values[{i}] of shape {v.shape}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError(
            f"`values[{i}]` must be finite: drop unobserved points from the trajectory (with "
            f"their times) instead. Received: {int(np.sum(~np.isfinite(v)))} non-finite value(s)"
        )
    # An `ODELayer` returns `(batch, times, state)`: a series of numbers is
    # one state component.
    return t, v[:, None] if v.ndim == 1 else v


# Times closer than this, relative to the largest time, are one grid time:
# `3 * 0.1` and `0.3` would otherwise be two columns, and a solver step of
# 5.6e-17 between them.
SAME_TIME_RTOL = 1e-9


def _same_time_tolerance(times):
    return SAME_TIME_RTOL * max(1.0, float(np.max(np.abs(times))))


def _union(times):
    """The sorted distinct times, each within `SAME_TIME_RTOL` (relative
    to the largest time) of the last kept one merged into it."""
    times = np.unique(times)
    tolerance = _same_time_tolerance(times)
    kept = [times[0]]
    for t in times[1:]:
        if t - kept[-1] > tolerance:
            kept.append(t)
    return np.asarray(kept)


def _columns(grid, times):
    """The grid column of each time: the nearest grid time."""
    if grid.size == 1:
        return np.zeros(len(times), int)
    index = np.clip(np.searchsorted(grid, times), 1, grid.size - 1)
    nearer_left = np.abs(times - grid[index - 1]) <= np.abs(grid[index] - times)
    return np.where(nearer_left, index - 1, index)


def common_time_grid(times, values, *, start=None, dtype="float32"):
    """Trajectories observed at their own times, on the union of those times.

    Args:
        times: one 1-D array of increasing observation times per
            trajectory.
        values: one array per trajectory, of shape `(len(times[i]), *state)`,
            or `(len(times[i]),)` for one state component (read as
            `(len(times[i]), 1)`, the shape of an `ODELayer`'s output): the
            observations.
        start: optional time of the initial state (the `ODELayer`'s
            `times[0]`), at or before every observation; it enters the grid
            with weight 0 where no trajectory was observed then. Defaults
            to `None` (the grid starts at the earliest observation).
        dtype: dtype of `targets` and `weights`. Defaults to `"float32"`.

    Returns:
        An `ObservationGrid` `(times, targets, weights)`.

    Example:

    ```python
    grid = kh.common_time_grid([t_a, t_b], [conc_a, conc_b], start=0.0)
    layer = kh.ODELayer(pk, constants, times=grid.times, max_step=0.25)
    model.fit(y0, grid.targets, sample_weight=grid.weights, epochs=500)
    kh.constant_uncertainty(model, y0, grid.targets, sample_weight=grid.weights)
    ```

    Give `max_step` to the `ODELayer`: the union grid is uneven. Times
    closer than `SAME_TIME_RTOL` (1e-9) times the largest time, such as
    `3 * 0.1` and `0.3`, are one grid time.

    What `fit` reports: Keras divides the weighted loss by the number of
    slots, `N * len(times)`, not by the observations, and plain `metrics`
    count the zero-weight slots; `weighted_metrics=["mse"]` gives the mean
    over the observations. A state component missing where another was
    observed: Keras's losses take one weight per time point, so give each
    component its own model output and `sample_weight` a list of
    `(N, len(times))` weights, one per output.
    """
    for arg, given in (("times", times), ("values", values)):
        if isinstance(given, dict) or hasattr(given, "keys"):
            raise TypeError(
                f"`{arg}` must be a sequence with one array per trajectory; a mapping would be "
                f"read as its keys. Pass `list({arg}.values())` (in the same order for `times` "
                f"and `values`). Received: {arg} of type {type(given).__name__}"
            )
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(
            f"`dtype` must be a floating-point dtype (an integer one would truncate the "
            f"observations). Received: dtype={dtype!r}"
        )
    times, values = list(times), list(values)
    if len(times) != len(values) or not times:
        raise ValueError(
            "`times` and `values` must hold one entry per trajectory, at least one. Received: "
            f"{len(times)} time arrays and {len(values)} value arrays"
        )
    pairs = [_checked_trajectory(i, t, v) for i, (t, v) in enumerate(zip(times, values))]
    state = pairs[0][1].shape[1:]
    for i, (_, v) in enumerate(pairs):
        if v.shape[1:] != state:
            raise ValueError(
                f"`values[{i}]` must have the state shape of `values[0]`, {state}. Received: "
                f"{v.shape[1:]}"
            )
    grid = _union(np.concatenate([t for t, _ in pairs]))
    if start is not None:
        if isinstance(start, (bool, np.bool_, str, bytes)):
            raise TypeError(f"`start` must be a number. Received: start={start!r}")
        try:
            start = float(start)
        except (TypeError, ValueError):
            raise TypeError(f"`start` must be a number. Received: start={start!r}") from None
        if not np.isfinite(start) or start - grid[0] > _same_time_tolerance(np.append(grid, start)):
            raise ValueError(
                f"`start` must be a finite time at or before the first observation ({grid[0]!r}). "
                f"Received: start={start!r}"
            )
        # A first observation at the start time (to SAME_TIME_RTOL) is merged into it.
        grid = _union(np.concatenate([[start], grid]))
    targets = np.zeros((len(pairs), grid.size) + state, dtype)
    weights = np.zeros((len(pairs), grid.size), dtype)
    for i, (t, v) in enumerate(pairs):
        index = _columns(grid, t)
        if np.any(np.diff(index) == 0):
            j = int(np.flatnonzero(np.diff(index) == 0)[0])
            raise ValueError(
                f"`times[{i}]` holds two times closer than {SAME_TIME_RTOL:g} times the "
                f"largest time, which are one grid time: times[{i}][{j}]={t[j]!r} and "
                f"times[{i}][{j + 1}]={t[j + 1]!r}. Merge or drop one of the observations."
            )
        targets[i, index] = v
        weights[i, index] = 1
    return ObservationGrid(grid, targets, weights)
