"""Damped pendulum: simulator and hybrid model.

True dynamics (`theta` in rad, time in s):

```
theta'' = -w0^2 sin(theta) - gamma theta'
```

The hybrid model knows only the frictionless part `-w0^2 sin(theta)` with
`w0` unknown; a small network of `(theta, theta')` supplies the rest.
"""

import keras
import numpy as np

from keras_hybrid.constants import PhysicalConstant
from keras_hybrid.layers import ODELayer
from keras_hybrid.models import HybridModel
from keras_hybrid.systems._checks import (
    check_constants,
    check_count,
    check_sampling,
    check_seed,
)

TRUE_CONSTANTS = {"w0": 1.0, "gamma": 0.2}


def rk4_numpy(func, y0, times, substeps=10):
    """Reference RK4 in float64 NumPy, `substeps` steps per interval."""
    ys = [np.asarray(y0, dtype="float64")]
    y = ys[0]
    for t0, t1 in zip(times[:-1], times[1:]):
        dt = (t1 - t0) / substeps
        for i in range(substeps):
            t = t0 + i * dt
            k1 = func(t, y)
            k2 = func(t + dt / 2, y + dt / 2 * k1)
            k3 = func(t + dt / 2, y + dt / 2 * k2)
            k4 = func(t + dt, y + dt * k3)
            y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(y)
    return np.stack(ys, axis=-2)


def damped_vector_field(w0, gamma):
    def field(t, y):
        theta, omega = y[..., 0], y[..., 1]
        return np.stack([omega, -(w0**2) * np.sin(theta) - gamma * omega], axis=-1)

    return field


def _initial_states(rng, n):
    """Angles uniform in [-1.57, 1.57] rad, angular velocities in [-1, 1] rad/s."""
    return np.stack([rng.uniform(-1.57, 1.57, n), rng.uniform(-1.0, 1.0, n)], -1)


def _observe(field, y0, n_steps, dt, noise, rng):
    """Times and noisy float32 observations of `field` integrated from `y0`."""
    check_sampling(n_steps, dt, noise)
    times = np.arange(n_steps) * dt
    clean = rk4_numpy(field, y0, times)
    observed = clean + noise * rng.standard_normal(clean.shape)
    return times.astype("float32"), observed.astype("float32")


def simulate(n_trajectories=200, n_steps=50, dt=0.05, noise=0.01, w0=1.0, gamma=0.2, seed=0):
    """Noisy trajectories of the damped pendulum.

    Initial angles are uniform in [-1.57, 1.57] rad and angular velocities
    uniform in [-1, 1] rad/s.

    Args:
        n_trajectories: number of trajectories. Defaults to `200`.
        n_steps: observed time points per trajectory. Defaults to `50`.
        dt: sampling interval, s. Defaults to `0.05`.
        noise: standard deviation of Gaussian observation noise. Defaults
            to `0.01`.
        w0: natural frequency, rad/s. Defaults to `1.0`.
        gamma: damping rate, 1/s. Defaults to `0.2`.
        seed: random seed. Defaults to `0`.

    Returns:
        `(times, y0, observations)`: times `(n_steps,)`, noisy initial
        states `(n, 2)` and noisy trajectories `(n, n_steps, 2)`, float32.
    """
    check_count("n_trajectories", n_trajectories)
    check_constants({"w0": w0, "gamma": gamma})
    check_seed(seed)
    rng = np.random.default_rng(seed)
    y0 = _initial_states(rng, n_trajectories)
    times, observed = _observe(damped_vector_field(w0, gamma), y0, n_steps, dt, noise, rng)
    return times, observed[:, 0], observed


EPISODE_W0_RANGE = (0.8, 2.0)


def simulate_episodes(n_episodes=200, n_steps=50, dt=0.05, noise=0.01, w0_range=EPISODE_W0_RANGE,
                      gamma=0.2, seed=0):
    """Damped pendulum episodes, each with its own natural frequency.

    `w0` is drawn per episode, uniform in `w0_range`; the damping `gamma`
    is shared. Initial states as in `simulate`.

    Args:
        n_episodes: number of episodes. Defaults to `200`.
        n_steps: observed time points per episode. Defaults to `50`.
        dt: sampling interval, s. Defaults to `0.05`.
        noise: standard deviation of Gaussian observation noise. Defaults
            to `0.01`.
        w0_range: `(lo, hi)` of the natural frequencies, rad/s. Defaults to
            `(0.8, 2.0)`.
        gamma: damping rate, 1/s. Defaults to `0.2`.
        seed: random seed. Defaults to `0`.

    Returns:
        `(times, observations, w0)`: times `(n_steps,)`, noisy episodes
        `(n, n_steps, 2)` (float32) and the true `w0` of each episode `(n,)`.
    """
    check_count("n_episodes", n_episodes)
    check_constants({"gamma": gamma})
    check_seed(seed)
    lo, hi = w0_range
    if not 0 < lo < hi or not np.isfinite(hi):
        raise ValueError(f"`w0_range` must be (lo, hi) with 0 < lo < hi. Received: w0_range={w0_range!r}")
    rng = np.random.default_rng(seed)
    w0 = rng.uniform(lo, hi, n_episodes)
    y0 = _initial_states(rng, n_episodes)
    times, observed = _observe(damped_vector_field(w0, gamma), y0, n_steps, dt, noise, rng)
    return times, observed, w0


@keras.saving.register_keras_serializable(package="keras_hybrid")
def frictionless_pendulum(t, y, constants):
    """Physics part: `theta' = omega, omega' = -w0^2 sin(theta)`."""
    theta, omega = y[..., 0], y[..., 1]
    return keras.ops.stack([omega, -constants["w0"] ** 2 * keras.ops.sin(theta)], axis=-1)


def build_model(times, sam=None, w0_init=0.5, hidden=64, seed=0, method="rk4"):
    """Hybrid model: frictionless physics (unknown `w0`) + tanh MLP.

    Args:
        times: observation times (s).
        sam: `SAM` settings, or `None` for plain training. Defaults to `None`.
        w0_init: initial guess of `w0`, rad/s. Defaults to `0.5`.
        hidden: width of the two hidden layers. Defaults to `64`.
        seed: seed of the network initialization. Defaults to `0`.
        method: ODE solver. Defaults to `"rk4"`.

    Returns:
        A built `HybridModel` mapping `y0 (batch, 2)` to the trajectory
        `(batch, len(times), 2)`.
    """
    init = keras.initializers.GlorotUniform
    correction = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed)),
            keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed + 1)),
            keras.layers.Dense(2, kernel_initializer=init(seed + 2)),
        ],
        name="correction",
    )
    physics = ODELayer(
        frictionless_pendulum,
        [PhysicalConstant("w0", w0_init, unit="rad/s", constraint="positive")],
        times=times,
        method=method,
        correction=correction,
        name="pendulum",
    )
    y0 = keras.Input((2,), name="y0")
    return HybridModel(y0, physics(y0), sam=sam, name="pendulum_hybrid")
