"""Benchmark simulators against known physics."""

import inspect
import re

import keras
import numpy as np
import pytest

from keras_hybrid.systems import duffing, forced_pendulum, reaction_diffusion
from keras_hybrid.systems.pendulum import rk4_numpy


def test_forced_pendulum_conserves_energy_without_damping_and_forcing():
    w0 = np.array([0.9, 2.5])
    y0 = np.array([[1.2, 0.0], [-0.7, 0.3]])
    times = np.arange(50) * 0.05
    field = forced_pendulum.forced_vector_field(w0, 0.0, 4.0, 0.0)
    ys = rk4_numpy(field, y0, times, substeps=20)
    energy = 0.5 * ys[..., 1] ** 2 + w0[:, None] ** 2 * (1 - np.cos(ys[..., 0]))
    drift = np.max(np.abs(energy - energy[:, :1]), axis=1) / energy[:, 0]
    assert np.all(drift < 1e-8), drift
    # With damping (and no forcing) energy strictly decreases.
    damped = rk4_numpy(forced_pendulum.forced_vector_field(w0, 0.5, 4.0, 0.0), y0, times, substeps=20)
    energy = 0.5 * damped[..., 1] ** 2 + w0[:, None] ** 2 * (1 - np.cos(damped[..., 0]))
    assert np.all(np.diff(energy, axis=1) < 0)


def test_forced_pendulum_small_angle_forced_response_matches_linear_theory():
    # Small amplitude, no damping: theta'' = -w0^2 theta + A w0^2 cos(W t),
    # theta(0) = 0, theta'(0) = 0 -> A w0^2 / (w0^2 - W^2) (cos W t - cos w0 t).
    w0, f, amp = 1.5, 3.5, 1e-4
    big_w = 2 * np.pi * f
    times = np.arange(50) * 0.05
    ys = rk4_numpy(forced_pendulum.forced_vector_field(w0, 0.0, f, amp), np.zeros((1, 2)), times, substeps=40)
    expected = amp * w0**2 / (w0**2 - big_w**2) * (np.cos(big_w * times) - np.cos(w0 * times))
    np.testing.assert_allclose(ys[0, :, 0], expected, atol=1e-9)


def test_forced_pendulum_simulate_is_deterministic_and_in_range():
    times, obs, constants = forced_pendulum.simulate(64, seed=3)
    times2, obs2, _ = forced_pendulum.simulate(64, seed=3)
    np.testing.assert_array_equal(obs, obs2)
    assert obs.shape == (64, 50, 2) and obs.dtype == np.float32
    np.testing.assert_allclose(np.diff(times), 0.05, rtol=1e-5)
    for name, (lo, hi) in forced_pendulum.RANGES.items():
        assert np.all(constants[name] >= lo) and np.all(constants[name] <= hi), name
    # Noise: the first observation is theta0 plus N(0, 0.01) noise.
    residual = obs[:, 0, 0] - constants["theta0"]
    assert 0.005 < np.std(residual) < 0.015
    assert not np.array_equal(forced_pendulum.simulate(64, seed=4)[1], obs)


def test_linear_duffing_matches_analytic_damped_oscillator():
    alpha, delta = duffing.TRUE_CONSTANTS["alpha"], duffing.TRUE_CONSTANTS["delta"]
    times, obs = duffing.simulate(5, noise=0.0, beta=0.0, gamma=0.0, seed=1)
    x0, v0 = obs[:, 0, 0].astype("float64"), obs[:, 0, 1].astype("float64")
    wd = np.sqrt(alpha - delta**2 / 4)
    t = times.astype("float64")[None, :]
    envelope = np.exp(-delta * t / 2)
    x = envelope * (x0[:, None] * np.cos(wd * t) + (v0[:, None] + delta * x0[:, None] / 2) / wd * np.sin(wd * t))
    np.testing.assert_allclose(obs[..., 0], x, atol=2e-6)


def test_duffing_physics_part_matches_numpy_field():
    y = np.random.default_rng(0).normal(size=(7, 2)).astype("float32")
    c = {"alpha": 1.3, "delta": 0.4}
    got = keras.ops.convert_to_numpy(duffing.linear_damped_oscillator(0.0, y, c))
    expected = duffing.duffing_vector_field(beta=0.0, gamma=0.0, Omega=1.0, **c)(0.0, y.astype("float64"))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_duffing_rejects_unknown_constant():
    with pytest.raises(ValueError, match="Unknown Duffing constants"):
        duffing.simulate(2, kappa=1.0)


def test_unforced_duffing_physics_matches_numpy_field():
    y = np.random.default_rng(0).normal(size=(7, 2)).astype("float32")
    c = {"alpha": 1.3, "beta": 0.7, "delta": 0.4}
    got = keras.ops.convert_to_numpy(duffing.unforced_duffing(0.0, y, c))
    expected = duffing.duffing_vector_field(gamma=0.0, Omega=1.0, **c)(0.0, y.astype("float64"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


class _TrueForcing(keras.layers.Layer):
    """`(x, x', t)` -> `(0, gamma cos(Omega t))`."""

    def __init__(self, gamma, **kwargs):
        super().__init__(**kwargs)
        self.gamma = gamma

    def call(self, features):
        t = features[..., 2:3]
        return keras.ops.concatenate(
            [keras.ops.zeros_like(t), self.gamma * keras.ops.cos(duffing.TRUE_CONSTANTS["Omega"] * t)], axis=-1
        )


@pytest.mark.parametrize("gamma", [duffing.TRUE_CONSTANTS["gamma"], 0.0])
def test_unforced_duffing_plus_true_forcing_reproduces_simulator(gamma):
    from keras_hybrid.constants import PhysicalConstant
    from keras_hybrid.layers import ODELayer

    times, obs = duffing.simulate(6, noise=0.0, seed=3)
    constants = [
        PhysicalConstant(k, duffing.TRUE_CONSTANTS[k], constraint="positive", trainable=False)
        for k in ("alpha", "beta", "delta")
    ]
    layer = ODELayer(duffing.unforced_duffing, constants, times=times, substeps=10,
                     correction=_TrueForcing(gamma), correction_inputs="state_and_time")
    predicted = keras.ops.convert_to_numpy(layer(obs[:, 0]))
    assert predicted.shape == obs.shape == (6, 50, 2)
    error = np.max(np.abs(predicted - obs))
    if gamma:
        # physics part with the true constants + the true forcing = simulator.
        assert error < 1e-4, error
    else:
        # Without the forcing the physics part alone is far off.
        assert error > 0.1, error


def test_forcing_minimum_norm_split():
    times, obs = duffing.simulate(50, seed=0, noise=0.0)
    # Nothing missing: the split is the truth.
    exact = duffing.forcing_minimum_norm_split(obs, times, gamma=0.0)
    np.testing.assert_allclose([exact["alpha"], exact["beta"], exact["delta"]], [1.0, 1.0, 0.2], atol=1e-9)
    assert exact["residual_ratio"] == 0.0
    # The forcing is far from the span of (x, x^3): the smallest network
    # keeps alpha and beta within 10 % (the `duffing` task's split moves
    # alpha by 50 %), but near resonance the driven velocity is in phase
    # with the forcing, which pulls delta below zero.
    split = duffing.forcing_minimum_norm_split(obs, times)
    assert abs(split["alpha"] - 1.0) < 0.1 and abs(split["beta"] - 1.0) < 0.1, split
    assert split["delta"] < 0.0, split
    assert split["residual_ratio"] > 0.75, split


def test_diffusion_conserves_mass_with_neumann_boundaries():
    _, obs = reaction_diffusion.simulate(2, n_steps=6, reaction=False, seed=0)
    fields = obs.reshape(2, 6, 32, 32, 2).astype("float64")
    totals = fields.sum(axis=(2, 3))
    np.testing.assert_allclose(totals, np.broadcast_to(totals[:, :1], totals.shape), rtol=1e-6)
    # ... while the field is smoothed (variance decreases).
    variance = fields.var(axis=(2, 3))
    assert np.all(np.diff(variance, axis=1) < 0)


def test_laplacian_of_quadratic_is_exact_in_the_interior():
    x = (np.arange(32) + 0.5) * reaction_diffusion.DX - 1.0
    field = np.broadcast_to((x**2)[:, None, None], (32, 32, 1))
    lap = reaction_diffusion.laplacian_numpy(field)
    np.testing.assert_allclose(lap[1:-1, :, 0], 2.0, rtol=1e-9)


def test_keras_diffusion_matches_simulator():
    y = np.random.default_rng(1).uniform(size=(3, 2048)).astype("float32")
    scale = reaction_diffusion.SCALE
    c = {"a": 1e-3 / scale, "b": 5e-3 / scale}
    got = keras.ops.convert_to_numpy(reaction_diffusion.fhn_diffusion(0.0, y, c))
    expected = reaction_diffusion.fhn_vector_field(1e-3, 5e-3, 0.0, reaction=False)(0.0, y.astype("float64"))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_fhn_reaction_term():
    # A spatially uniform state has no diffusion: du/dt = u - u^3 - k - v.
    y = np.tile(np.array([0.5, 0.2]), 1024)[None]
    dy = reaction_diffusion.fhn_vector_field(1e-3, 5e-3, 5e-3)(0.0, y)
    np.testing.assert_allclose(dy[0, 0], 0.5 - 0.125 - 5e-3 - 0.2)
    np.testing.assert_allclose(dy[0, 1], 0.5 - 0.2)


def test_forcing_bank_correction_round_trip_and_forcing_term():
    layer = forced_pendulum.ForcingBankCorrection(2, n_frequencies=4, frequency_range=(1.0, 4.0), hidden=8, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 2 + 1 + 8 + 3)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == (5, 2)
    clone = forced_pendulum.ForcingBankCorrection.from_config(layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), out, rtol=1e-6)
    # The forcing part is sum_k a_k sin(w_k t) + b_k cos(w_k t), routed
    # linearly: changing only the amplitudes changes the output by
    # route(delta forcing).
    x2 = x.copy()
    x2[:, 3:11] += rng.normal(size=(5, 8)).astype("float32")
    t, w = x[:, 2:3], np.array([1.0, 2.0, 3.0, 4.0])
    waves = np.concatenate([np.sin(t * w), np.cos(t * w)], axis=-1)
    delta = np.sum(waves * (x2[:, 3:11] - x[:, 3:11]), axis=-1, keepdims=True)
    route = keras.ops.convert_to_numpy(layer.route.kernel)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x2)) - out, delta @ route, rtol=1e-4, atol=1e-5
    )


def test_forcing_bank_correction_rejects_bad_arguments():
    with pytest.raises(ValueError, match="frequency_range"):
        forced_pendulum.ForcingBankCorrection(2, frequency_range=(4.0, 1.0))
    layer = forced_pendulum.ForcingBankCorrection(2, n_frequencies=4)
    with pytest.raises(ValueError, match="input features"):
        layer.build((None, 6))

def test_duffing_minimum_norm_split():
    times, obs = duffing.simulate(50, seed=0, noise=0.0)
    # Nothing missing from the physics part: the split is the truth.
    exact = duffing.minimum_norm_split(obs, times, beta=0.0, gamma=0.0)
    np.testing.assert_allclose([exact["alpha"], exact["delta"]], [1.0, 0.2], atol=1e-9)
    # With the cubic term, the smallest network output is not the truth:
    # the projection of -x^3 on -x moves alpha up by about half of beta.
    times, obs = duffing.simulate(200, seed=0, noise=0.0)
    split = duffing.minimum_norm_split(obs, times)
    assert 1.4 < split["alpha"] < 1.7, split
    assert split["residual_ratio"] < 0.8, split


def test_pendulum_episodes_use_their_own_frequency():
    from keras_hybrid.systems import pendulum

    times, obs, w0 = pendulum.simulate_episodes(32, noise=0.0, seed=5)
    assert obs.shape == (32, 50, 2) and w0.shape == (32,)
    lo, hi = pendulum.EPISODE_W0_RANGE
    assert np.all((w0 >= lo) & (w0 <= hi)) and np.ptp(w0) > 0.5
    # With its own w0 each episode loses energy (damping only); with the
    # frequency of another episode the "energy" is not monotone.
    theta, omega = obs[..., 0].astype("float64"), obs[..., 1].astype("float64")
    energy = 0.5 * omega**2 + w0[:, None] ** 2 * (1 - np.cos(theta))
    assert np.all(np.diff(energy, axis=1) <= 1e-5)
    wrong = 0.5 * omega**2 + np.roll(w0, 1)[:, None] ** 2 * (1 - np.cos(theta))
    assert np.mean(np.any(np.diff(wrong, axis=1) > 1e-3, axis=1)) > 0.5
    with pytest.raises(ValueError, match="w0_range"):
        pendulum.simulate_episodes(4, w0_range=(2.0, 1.0))


# -- small-data algebraic laws --------------------------------------------

from keras_hybrid.systems import algebraic  # noqa: E402


def test_michaelis_menten_truth_at_known_points():
    # At S = Km the saturable part is Vmax / 2; the left-out term is k_ns S.
    np.testing.assert_allclose(algebraic.michaelis_menten_truth(np.array([0.3])), [0.5 + 0.06], rtol=1e-12)
    np.testing.assert_allclose(algebraic.michaelis_menten_truth(np.array([0.0])), [0.0], atol=1e-15)
    law = algebraic.michaelis_menten_law(np.array([[0.3]], "float32"), {"Vmax": 2.0, "Km": 0.3})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(law), [[1.0]], rtol=1e-6)


def test_arrhenius_truth_at_known_points():
    # Ea / (R T) = 20 at T = Ea / (20 R): ln k = ln(1 + k_b).
    t_star = 50.0 / (20.0 * algebraic.GAS_CONSTANT)
    np.testing.assert_allclose(algebraic.arrhenius_truth(np.array([t_star])), [np.log(1.05)], rtol=1e-12)
    # At 630 K the background rate is negligible: the law itself.
    hot = algebraic.arrhenius_truth(np.array([630.0]))
    np.testing.assert_allclose(hot, [20.0 - 50.0 / (algebraic.GAS_CONSTANT * 630.0)], atol=1e-5)
    law = algebraic.arrhenius_law(np.array([[t_star]], "float32"), {"lnA": 20.0, "Ea": 50.0})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(law), [[0.0]], atol=2e-5)


def test_first_order_truth_at_known_points():
    half_life = np.log(2) / 0.02
    np.testing.assert_allclose(algebraic.first_order_truth(np.array([0.0, half_life])), [1.1, 0.6], rtol=1e-12)
    law = algebraic.first_order_law(np.array([[half_life]], "float32"), {"C0": 1.0, "k": 0.02})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(law), [[0.5]], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(algebraic.TASKS))
def test_algebraic_simulate_design_noise_and_determinism(name):
    spec = algebraic.TASKS[name]
    x, y = algebraic.simulate(name, seed=4)
    assert x.shape == y.shape == (spec["n"], 1) and x.dtype == y.dtype == np.float32
    np.testing.assert_allclose([x.min(), x.max()], spec["range"], rtol=1e-6)
    np.testing.assert_array_equal(y, algebraic.simulate(name, seed=4)[1])
    # Residuals around the truth have the stated noise level (loose: few points).
    residual = y[:, 0] - spec["truth"](x[:, 0].astype("float64"))
    assert 0.3 * spec["noise"] < np.std(residual) < 2.0 * spec["noise"], np.std(residual)
    xs = algebraic.uniform_inputs(name, 50, seed=1)
    assert np.all((xs >= spec["range"][0]) & (xs <= spec["range"][1]))
    with pytest.raises(ValueError, match="name='ohm'"):
        algebraic.simulate("ohm")


# -- pendulum seen through rendered frames ------------------------------------

from keras_hybrid.systems import pendulum, pendulum_images  # noqa: E402


def test_rendered_pendulum_puts_the_bob_at_the_known_pixel():
    # 15 pixels: the pivot (frame centre) is pixel (7, 7) and the pixel
    # pitch 2/15, so a length of 4 pitches puts the bob on a pixel centre.
    length = 4 * 2 / 15
    for theta, (row, col) in [(0.0, (11, 7)), (np.pi / 2, (7, 11)), (-np.pi / 2, (7, 3)), (np.pi, (3, 7))]:
        frame = pendulum_images.render(theta, size=15, length=length, width=0.1)
        assert frame.shape == (15, 15)
        assert np.unravel_index(np.argmax(frame), frame.shape) == (row, col), theta
        np.testing.assert_allclose(frame[row, col], 1.0, atol=1e-12)
    # Straight down: the default 16-pixel frame is mirror-symmetric.
    down = pendulum_images.render(0.0)
    np.testing.assert_allclose(down, down[:, ::-1], atol=1e-12)
    assert np.argmax(down.max(axis=1)) > 8  # below the pivot (rows grow downwards)


def test_rendered_blob_centroid_follows_the_angle():
    theta = np.linspace(-2.0, 2.0, 9)
    frames = pendulum_images.render(theta, size=32, length=0.6, width=0.08)
    grid = pendulum_images.pixel_centres(32)
    mass = frames.sum(axis=(1, 2))
    x = (frames * grid[None, None, :]).sum(axis=(1, 2)) / mass
    y = (frames * grid[None, :, None]).sum(axis=(1, 2)) / mass
    np.testing.assert_allclose(x, 0.6 * np.sin(theta), atol=1e-3)
    np.testing.assert_allclose(y, 0.6 * np.cos(theta), atol=1e-3)


def test_pendulum_images_simulate_shapes_noise_and_dynamics():
    times, frames, states = pendulum_images.simulate(8, n_steps=12, dt=0.1, noise=0.05, seed=2)
    assert times.shape == (12,) and frames.shape == (8, 12, 16, 16) and states.shape == (8, 12, 2)
    assert frames.dtype == states.dtype == np.float32
    np.testing.assert_array_equal(frames, pendulum_images.simulate(8, n_steps=12, seed=2)[1])
    # The frames are the rendered angles plus N(0, 0.05) pixel noise.
    residual = frames - pendulum_images.render(states[..., 0])
    assert 0.045 < residual.std() < 0.055 and abs(residual.mean()) < 0.005
    # Damped: the energy 0.5 theta'^2 + w0^2 (1 - cos theta) decreases.
    energy = 0.5 * states[..., 1].astype("float64") ** 2 + 1 - np.cos(states[..., 0])
    assert np.all(np.diff(energy, axis=1) < 1e-6)
    assert np.all(np.abs(states[:, 0, 0]) <= 1.57) and np.all(np.abs(states[:, 0, 1]) <= 1.0)


def test_pendulum_images_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size=3"):
        pendulum_images.render(0.0, size=3)
    with pytest.raises(ValueError, match="length=1.2"):
        pendulum_images.render(0.0, length=1.2)
    with pytest.raises(ValueError, match="n_steps=1"):
        pendulum_images.simulate(2, n_steps=1)
    # dt=0 rendered one frame over and over, noise=nan frames of NaN, and
    # n_steps=2.5 three frames; the trajectories' simulator shares the checks.
    for simulate in (pendulum_images.simulate, pendulum.simulate):
        for kwargs, named in ((dict(dt=0.0), "dt=0.0"), (dict(dt=-0.1), "dt=-0.1"),
                              (dict(noise=float("nan")), "noise=nan"), (dict(n_steps=2.5), "n_steps=2.5")):
            with pytest.raises(ValueError, match=named):
                simulate(2, **kwargs)


_SIMULATORS = {
    "pendulum": (pendulum.simulate, "n_trajectories"),
    "pendulum_episodes": (pendulum.simulate_episodes, "n_episodes"),
    "pendulum_images": (pendulum_images.simulate, "n_trajectories"),
    "duffing": (duffing.simulate, "n_trajectories"),
    "forced_pendulum": (forced_pendulum.simulate, "n_episodes"),
    "reaction_diffusion": (reaction_diffusion.simulate, "n_trajectories"),
}


@pytest.mark.parametrize("system", sorted(_SIMULATORS))
def test_every_simulator_refuses_bad_counts_steps_noise_and_seeds(system):
    # These came back as empty arrays (n_steps=0 with times of shape (0,)
    # beside observations of n samples), constant trajectories (dt=0,
    # substeps=0), negative times, NaN data (noise=nan) or NumPy errors
    # naming no argument (seed=-1, a count of 2.5).
    simulate, count = _SIMULATORS[system]
    bad = [({count: 0}, f"{count}=0"), ({count: 2.5}, f"{count}=2.5"), ({count: True}, f"{count}=True"),
           ({"n_steps": 0}, "n_steps=0"), ({"n_steps": 2.5}, "n_steps=2.5"),
           ({"dt": 0.0}, "dt=0.0"), ({"dt": -0.1}, "dt=-0.1"), ({"dt": float("inf")}, "dt=inf"),
           ({"noise": -0.1}, "noise=-0.1"), ({"noise": float("nan")}, "noise=nan"),
           ({"noise": "0.1"}, "noise='0.1'"), ({"seed": -1}, "seed=-1"), ({"seed": 1.5}, "seed=1.5")]
    if "substeps" in inspect.signature(simulate).parameters:
        bad += [({"substeps": 0}, "substeps=0"), ({"substeps": -1}, "substeps=-1")]
    if "w0" in inspect.signature(simulate).parameters:
        bad += [({"w0": float("nan")}, "w0=nan"), ({"gamma": float("inf")}, "gamma=inf")]
    if system in ("duffing", "reaction_diffusion"):
        name = "alpha" if system == "duffing" else "a"
        bad += [({name: float("nan")}, f"{name}=nan")]
    arguments = {count: 2}
    for kwargs, named in bad:
        with pytest.raises(ValueError, match=re.escape(named)):
            simulate(**{**arguments, **kwargs})
    # The smallest valid sampling still simulates.
    out = simulate(**arguments, n_steps=2, seed=0)
    assert out[0].shape == (2,) and np.all(np.isfinite(out[1]))


def test_algebraic_simulator_refuses_bad_arguments():
    name = sorted(algebraic.TASKS)[0]
    for call, named in ((lambda: algebraic.simulate(name, noise=-0.1), "noise=-0.1"),
                        (lambda: algebraic.simulate(name, noise=float("nan")), "noise=nan"),
                        (lambda: algebraic.simulate(name, n=0), "n=0"),
                        (lambda: algebraic.simulate(name, n=True), "n=True"),
                        (lambda: algebraic.simulate(name, seed=-1), "seed=-1"),
                        (lambda: algebraic.design("nope"), "name='nope'"),
                        (lambda: algebraic.uniform_inputs("nope", 3, 0), "name='nope'"),
                        (lambda: algebraic.uniform_inputs(name, 0, 0), "n=0")):
        with pytest.raises(ValueError, match=re.escape(named)):
            call()
