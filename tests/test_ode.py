"""ODE solvers against analytic solutions, their order, and gradients."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_hybrid import TABLEAUS, odeint


def _decay(t, y):
    return -y


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4", "dopri5", "bdf"])
def test_exponential_decay(method):
    t = np.linspace(0.0, 2.0, 21)
    y0 = np.array([[1.0], [2.0]], "float64")
    substeps = 200 if method == "euler" else 20
    y = np.asarray(odeint(_decay, y0, t, method=method, substeps=substeps))
    assert y.shape == (2, 21, 1)
    expected = y0[:, None, :] * np.exp(-t)[None, :, None]
    tol = {"euler": 2e-3, "midpoint": 1e-5, "heun": 1e-5}.get(method, 1e-6)
    np.testing.assert_allclose(y, expected, atol=tol)


def _oscillator(t, y):
    return tf.stack([y[..., 1], -4.0 * y[..., 0]], axis=-1)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_harmonic_oscillator(method):
    t = np.linspace(0.0, 3.0, 61)
    y = np.asarray(odeint(_oscillator, np.array([1.0, 0.0]), t, method=method, substeps=4))
    tol = 1e-6 if method == "rk4" else 1e-5  # dopri5 at its default rtol=1e-6
    np.testing.assert_allclose(y[:, 0], np.cos(2 * t), atol=tol)
    np.testing.assert_allclose(y[:, 1], -2 * np.sin(2 * t), atol=tol)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_empirical_order_of_convergence(method):
    t = np.array([0.0, 1.0])
    y0 = np.array([1.0, 0.0])
    exact = np.array([np.cos(2.0), -2 * np.sin(2.0)])
    errors = []
    for n in (16, 32, 64):
        y = np.asarray(odeint(_oscillator, y0, t, method=method, substeps=n))[-1]
        errors.append(np.linalg.norm(y - exact))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(orders, TABLEAUS[method].order, atol=0.15)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "bdf"])
def test_gradient_with_respect_to_rate_constant(method):
    # y' = -k y -> y(T) = y0 exp(-k T); dy(T)/dk = -T y(T)
    t = np.linspace(0.0, 1.5, 4)
    k = tf.Variable(0.7, dtype=tf.float64)
    with tf.GradientTape() as tape:
        y = odeint(lambda t, y, k: -k * y, tf.constant([1.0], tf.float64), t, method=method,
                   substeps=20, constants={"k": tf.identity(k)})
        final = y[-1, 0]
    grad = tape.gradient(final, k)
    np.testing.assert_allclose(final.numpy(), np.exp(-0.7 * 1.5), rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), -1.5 * np.exp(-0.7 * 1.5), rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method='rk5'"):
        odeint(_decay, np.ones(1), [0.0, 1.0], method="rk5")
    with pytest.raises(ValueError, match="substeps=0"):
        odeint(_decay, np.ones(1), [0.0, 1.0], substeps=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        odeint(_decay, np.ones(1), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="at least 2"):
        odeint(_decay, np.ones(1), [0.0])


def test_hundred_step_rk4_training_step_compiles_quickly():
    # Unrolled in Python, this took minutes to compile under XLA; looped it
    # takes seconds. The bound is loose (a slow machine), the point is the
    # order of magnitude; benchmarks/ode_training.py measures it properly.
    from keras_hybrid.systems import pendulum

    times = np.arange(100) * 0.05
    model = pendulum.build_model(times)
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    x = np.zeros((8, 2), "float32")
    y = np.zeros((8, 100, 2), "float32")
    start = time.perf_counter()
    model.fit(x, y, epochs=1, verbose=0)
    assert time.perf_counter() - start < 60


# -- unevenly spaced time points: `max_step` ------------------------------------

UNEVEN = np.array([0.0, 0.1, 5.0, 5.05, 5.1, 9.0])


def test_max_step_integrates_long_gaps_as_accurately_as_short_intervals():
    y0 = np.array([[1.0]])
    exact = np.exp(-0.5 * UNEVEN)[None, :, None]
    decay = lambda t, y: -0.5 * y  # noqa: E731
    one_step = np.asarray(odeint(decay, y0, UNEVEN))
    # One RK4 step over the 4.9-long gap: 0.572 (x 0.95) for 0.082.
    assert abs(one_step[0, 2, 0] - exact[0, 2, 0]) > 0.4
    split = np.asarray(odeint(decay, y0, UNEVEN, max_step=0.05))
    np.testing.assert_allclose(split, exact, rtol=1e-7)
    # Its gradient, through intervals of 2 to 98 steps: dy(9)/dk = -9 y(9).
    k = tf.Variable(0.5, dtype=tf.float64)
    with tf.GradientTape() as tape:
        final = odeint(lambda t, y, k: -k * y, tf.constant([1.0], tf.float64), UNEVEN,
                       max_step=0.05, constants={"k": tf.identity(k)})[-1, 0]
    np.testing.assert_allclose(tape.gradient(final, k).numpy(), -9.0 * np.exp(-4.5), rtol=1e-6)


def test_max_step_on_even_time_points_is_substeps():
    t = np.linspace(0.0, 1.0, 11)
    y0 = np.array([1.0, 0.0])
    # 0.1 / 0.025 = 4 steps in every interval: the very same loop as substeps=4.
    np.testing.assert_array_equal(np.asarray(odeint(_oscillator, y0, t, max_step=0.025)),
                                  np.asarray(odeint(_oscillator, y0, t, substeps=4)))
    # A max_step above the spacing leaves `substeps` as it is.
    np.testing.assert_array_equal(np.asarray(odeint(_oscillator, y0, t, substeps=2, max_step=1.0)),
                                  np.asarray(odeint(_oscillator, y0, t, substeps=2)))


def test_max_step_under_xla_and_with_checkpoints():
    y0 = tf.constant([[1.0]], tf.float32)

    @tf.function(jit_compile=True)
    def compiled(y0):
        return odeint(lambda t, y: -0.5 * y, y0, UNEVEN, max_step=0.05)

    exact = np.exp(-0.5 * UNEVEN)[None, :, None]
    np.testing.assert_allclose(compiled(y0).numpy(), exact, rtol=1e-5)
    checkpointed = odeint(lambda t, y: -0.5 * y, y0, UNEVEN, max_step=0.05, checkpoint=2)
    np.testing.assert_allclose(checkpointed.numpy(), exact, rtol=1e-5)


def test_a_repeated_time_deep_in_a_long_grid_is_named_where_it_is():
    t = np.arange(5000) * 0.01
    t[2500] = t[2499]
    with pytest.raises(ValueError, match=r"t\[2500\]=24.99\d* after t\[2499\]=24.99\d* .*5000 points"):
        odeint(_decay, np.ones(1), t)
    t[2500] = np.nan
    with pytest.raises(ValueError, match=r"t\[2500\]=nan \(5000 points"):
        odeint(_decay, np.ones(1), t)


def test_max_step_bad_arguments():
    for bad in (0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=f"max_step={bad!r}"):
            odeint(_decay, np.ones(1), [0.0, 1.0], max_step=bad)
    with pytest.raises(ValueError, match="adaptive methods choose their own steps"):
        odeint(_decay, np.ones(1), [0.0, 1.0], method="dopri5", max_step=0.1)
    # More steps than an int32 count holds: it wrapped around to 499,997
    # and integrated 0.0005 of the interval, silently.
    with pytest.raises(ValueError, match=r"needs 4295499997 solver steps .* t=3e-09 to t=4.2955"):
        odeint(_decay, np.ones(1), [0.0, 3e-9, 4.2955], max_step=1e-9)


def _oscillator_law(t, y, c):
    return tf.stack([y[..., 1], -c["w"] ** 2 * y[..., 0]], -1)


def test_adaptive_solve_far_from_time_zero():
    # TFP stepped in float32 from t0: at t0 = 1e6 the oscillator came out
    # 0.27 off, and t0 = 1.7e9 (a Unix time) never finished: not tried
    # here, so that a regression fails rather than hangs. (BDF takes the
    # same shifted path; its solve here takes a minute.)
    import keras_hybrid as kh

    steps = np.arange(50) * 0.05
    with pytest.warns(UserWarning, match="resolved only to"):
        layer = kh.ODELayer(_oscillator_law, [kh.PhysicalConstant("w", 2.0)], times=1e6 + steps,
                            method="dopri5")
    y = layer(np.array([[1.0, 0.0]], "float32"))
    np.testing.assert_allclose(y.numpy()[0, :, 0], np.cos(2.0 * steps), atol=2e-5)


def test_adaptive_solve_gives_the_equation_the_true_time():
    # y' = t from t0 = 100: y = y0 + (t^2 - t0^2) / 2.
    t = 100.0 + np.linspace(0.0, 1.0, 5)
    y = odeint(lambda t, y: tf.ones_like(y) * t, np.zeros(1, "float32"), t, method="dopri5")
    np.testing.assert_allclose(y.numpy()[:, 0], (t**2 - 100.0**2) / 2, rtol=1e-5)


@keras.saving.register_keras_serializable(package="test_ode")
def _rate_law(t, y, c):
    return -c["k"] * y


def test_layer_warns_when_its_dtype_cannot_resolve_the_times():
    import warnings

    import keras_hybrid as kh

    def layer(times, dtype=None, substeps=1):
        return kh.ODELayer(_rate_law, [kh.PhysicalConstant("k", 1.0)], times=times,
                           dtype=dtype, substeps=substeps)

    with pytest.warns(UserWarning, match=r"time near 1e\+06 is resolved only to 0.0625, against "
                                         r"solver steps of 0.05.*times - times\[0\]"):
        layer(1e6 + np.arange(10) * 0.05)
    with pytest.warns(UserWarning, match="resolved only to"):
        layer(1e4 + np.arange(10), substeps=100)  # steps of 0.01
    # From 0 already: shifting cannot help (it used to be the advice).
    with pytest.warns(UserWarning, match=r"already span that range from near 0: compute in float64") as caught:
        layer(np.arange(200001) * 0.01, substeps=100)
    assert "times - times[0]" not in str(caught[0].message)
    # In float64 there is nothing finer to compute in: such times are one
    # time recorded twice.
    with pytest.warns(UserWarning, match=r"same time recorded twice") as caught:
        layer([0.3, 3 * 0.1, 1.0], dtype="float64")
    assert "compute in float64" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(np.arange(10) * 0.05)
        layer(1e6 + np.arange(10) * 0.05, dtype="float64")
        layer(1e3 + np.arange(10) * 0.05)


def test_strings_and_booleans_as_times_are_refused():
    # NumPy read them as numbers: ["0", "0.5", "1"] solved on [0, 0.5, 1].
    import keras_hybrid as kh

    for times, shown in ((["0", "0.5", "1"], r"\['0', '0.5', '1'\]"), ([False, True], r"\[False, True\]")):
        with pytest.raises(TypeError, match=rf"`times` must hold numbers.*{shown}"):
            kh.ODELayer(_rate_law, [kh.PhysicalConstant("k", 1.0)], times=times)


def test_dates_and_durations_as_times_are_refused():
    # Read as numbers they counted nanoseconds: hours as a pandas
    # timedelta gave steps of 3.6e12 and a trajectory of inf and nan.
    import keras_hybrid as kh

    hours = np.array([0, 1, 2], dtype="timedelta64[h]").astype("timedelta64[ns]")
    days = np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[D]")
    for times in (hours, days):
        with pytest.raises(ValueError, match=r"`times` must be numbers in the time unit .*"
                                             r"np.timedelta64\(1, 'h'\).*Received: times of dtype"):
            kh.ODELayer(_rate_law, [kh.PhysicalConstant("k", 1.0)], times=times)
    with pytest.raises(ValueError, match=r"`t` must be numbers"):
        odeint(_decay, np.ones(1), hours)
    with pytest.raises(ValueError, match=r"`times\[1\]` must be numbers"):
        kh.common_time_grid([np.arange(3.0), hours], [np.ones(3), np.ones(3)])
