"""Trajectories observed at their own times: the union grid, its weights,
and a fit on it that sees each observation once (classical least squares
on the observations alone)."""

import math

import keras
import numpy as np
import pytest

import keras_hybrid as kh


@keras.saving.register_keras_serializable(package="test_observations")
def first_order(t, y, c):
    return -c["k"] * y


def _subjects(seed=0):
    """Three subjects, each sampled at its own 6-9 times in (0, 8]."""
    rng = np.random.default_rng(seed)
    times, values, y0 = [], [], []
    for size, c0 in zip((6, 9, 7), (2.0, 1.5, 2.5)):
        t = np.sort(rng.choice(np.arange(1, 81) / 10.0, size, replace=False))
        times.append(t)
        values.append((c0 * np.exp(-0.45 * t) + 0.02 * rng.standard_normal(size))[:, None])
        y0.append([c0])
    return times, values, np.array(y0, "float32")


def test_grid_places_each_observation_at_its_time():
    times, values, _ = _subjects()
    grid = kh.common_time_grid(times, values, start=0.0)
    assert grid.times[0] == 0.0 and np.all(np.diff(grid.times) > 0)
    assert set(np.round(grid.times, 6)) == {0.0} | set(np.round(np.concatenate(times), 6))
    assert grid.targets.shape == (3, grid.times.size, 1) and grid.weights.shape == (3, grid.times.size)
    for i, (t, v) in enumerate(zip(times, values)):
        observed = grid.weights[i] == 1
        np.testing.assert_allclose(grid.times[observed], t)
        np.testing.assert_allclose(grid.targets[i, observed], v, rtol=1e-6)
        assert np.all(grid.targets[i, ~observed] == 0)
    assert grid.weights.sum() == sum(len(t) for t in times)


def test_errors_name_the_trajectory():
    with pytest.raises(ValueError, match=r"`times\[1\]` must be finite and strictly increasing"):
        kh.common_time_grid([[0, 1], [1, 1]], [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"`values\[0\]` must hold one observation per time point.*\(3,\)"):
        kh.common_time_grid([[0, 1]], [[1, 2, 3]])
    with pytest.raises(ValueError, match=r"`values\[0\]` must be finite: drop unobserved points"):
        kh.common_time_grid([[0, 1]], [[1, np.nan]])
    with pytest.raises(ValueError, match=r"`start` must be a finite time at or before the first observation"):
        kh.common_time_grid([[1, 2]], [[1, 2]], start=1.5)
    with pytest.raises(ValueError, match=r"`values\[1\]` must have the state shape of `values\[0\]`"):
        kh.common_time_grid([[0, 1], [0, 1]], [np.ones((2, 1)), np.ones((2, 2))])


def test_inputs_that_were_misread_are_refused_and_rounding_twins_share_a_time():
    # A dict was read as its keys; an integer dtype truncated the values;
    # a bad `start` or value failed in NumPy without the argument's name.
    with pytest.raises(TypeError, match=r"`times` must be a sequence.*list\(times.values\(\)\)"):
        kh.common_time_grid({"A": [0.5, 1.0]}, {"A": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"`dtype` must be a floating-point dtype.*'int32'"):
        kh.common_time_grid([[0.5, 1.5]], [[1.7, 2.2]], dtype="int32")
    with pytest.raises(TypeError, match=r"`start` must be a number. Received: start='zero'"):
        kh.common_time_grid([[0.5, 1.0]], [[1.0, 2.0]], start="zero")
    with pytest.raises(TypeError, match=r"`values\[0\]` must hold numbers.*object"):
        kh.common_time_grid([[0.5, 1.0]], [[1.0, None]])
    # 3 * 0.1 and 0.3 are one time of the grid (they were two columns, and
    # a solver step of 5.6e-17 between them).
    grid = kh.common_time_grid([[3 * 0.1, 1.0], [0.3, 0.5]], [[1.0, 2.0], [3.0, 4.0]], start=0.0)
    np.testing.assert_array_equal(grid.times, [0.0, 0.3, 0.5, 1.0])
    np.testing.assert_array_equal(grid.targets[..., 0], [[0, 1, 0, 2], [0, 3, 4, 0]])
    np.testing.assert_array_equal(grid.weights, [[0, 1, 0, 1], [0, 1, 1, 0]])
    with pytest.raises(ValueError, match=r"`times\[0\]` holds two times closer than 1e-09"):
        kh.common_time_grid([[0.3, 0.3 + 1e-12, 1.0]], [[1.0, 2.0, 3.0]])
    # So is a first observation at the start time (it was a column of its own).
    for first, start in ((3 * 0.1, 0.3), (0.3, 3 * 0.1)):
        grid = kh.common_time_grid([[first, 1.0], [0.5, 1.0]], [[1.0, 2.0], [3.0, 4.0]], start=start)
        np.testing.assert_allclose(grid.times, [0.3, 0.5, 1.0], rtol=1e-15)
        np.testing.assert_array_equal(grid.weights, [[1, 0, 1], [0, 1, 1]])
    # Times as strings or booleans were read as numbers.
    with pytest.raises(TypeError, match=r"`times\[0\]` must hold numbers.*\['0', '1'\]"):
        kh.common_time_grid([["0", "1"]], [[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"`times\[0\]` must hold numbers.*bool"):
        kh.common_time_grid([[False, True]], [[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"`start` must be a number. Received: start=True"):
        kh.common_time_grid([[0.5, 1.0]], [[1.0, 2.0]], start=True)


def test_fit_on_the_grid_is_least_squares_on_the_observations():
    times, values, y0 = _subjects()
    grid = kh.common_time_grid(times, values, start=0.0)
    inputs = keras.Input((1,))
    layer = kh.ODELayer(first_order, [kh.PhysicalConstant("k", 0.4, constraint="positive")],
                        times=grid.times, max_step=0.02)
    model = kh.HybridModel(inputs, layer(inputs), sam=None)
    model.compile(optimizer="sgd", loss="mse")
    # The least-squares rate on the 22 observations alone (NumPy, float64).
    t = np.concatenate(times)
    c0 = np.concatenate([np.full(len(ti), y0[i, 0]) for i, ti in enumerate(times)]).astype("float64")
    y = np.concatenate(values)[:, 0]
    k = 0.4
    for _ in range(50):
        f = c0 * np.exp(-k * t)
        j = -t * f
        k += float(j @ (y - f) / (j @ j))
    f = c0 * np.exp(-k * t)
    j = -t * f
    s2 = float((y - f) @ (y - f)) / (len(y) - 1)
    stderr = math.sqrt(s2 / float(j @ j))
    layer.set_constant("k", k)
    result = kh.constant_uncertainty(model, y0, grid.targets, sample_weight=grid.weights)
    assert result.n == len(y) == 22
    assert result.stderr["k"] == pytest.approx(stderr, rel=2e-3)
    # `evaluate` scores the observations only (Keras's mean over every grid value).
    loss = model.evaluate(y0, grid.targets, sample_weight=grid.weights, verbose=0)
    assert loss == pytest.approx(float((y - f) @ (y - f)) / grid.weights.size, rel=1e-3)


def test_a_series_of_numbers_is_one_state_component():
    times, values, y0 = _subjects()
    grid = kh.common_time_grid(times, [v[:, 0] for v in values], start=0.0)
    assert grid.targets.shape == (3, grid.times.size, 1)
    np.testing.assert_array_equal(grid.targets, kh.common_time_grid(times, values, start=0.0).targets)
    inputs = keras.Input((1,))
    layer = kh.ODELayer(first_order, [kh.PhysicalConstant("k", 0.4, constraint="positive")],
                        times=grid.times, max_step=0.1)
    model = kh.HybridModel(inputs, layer(inputs), sam=None)
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(y0, grid.targets, sample_weight=grid.weights, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
