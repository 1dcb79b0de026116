"""Forced damped pendulum with per-episode constants (Phys-VAE setting).

True dynamics (`theta` in rad, time in s), one set of constants per episode:

```
theta'' = -w0^2 sin(theta) - gamma theta' + A w0^2 cos(2 pi f t)
```

with `theta(0)` uniform in [-1.57, 1.57] rad, `theta'(0) = 0`, `w0` uniform
in [0.785, 3.14] rad/s, `gamma` in [0, 0.8] 1/s, `f` in [3.14, 6.28] Hz and
`A` in [0, 40] rad. The hybrid model knows only `theta'' = -w0^2 sin(theta)`;
an encoder infers each episode's `w0` and a latent context from the
observed sequence, and a network of `(theta, theta', t, context)` supplies
the damping and the forcing.

Reference:
    Takeishi & Kalousis, "Physics-Integrated Variational Autoencoders for
    Robust and Interpretable Generative Modeling", arXiv:2102.13156.
"""

import numpy as np

from keras_hybrid.systems.pendulum import rk4_numpy

RANGES = {
    "theta0": (-1.57, 1.57),
    "w0": (0.785, 3.14),
    "gamma": (0.0, 0.8),
    "f": (3.14, 6.28),
    "A": (0.0, 40.0),
}


def forced_vector_field(w0, gamma, f, A):
    """NumPy vector field; each constant is a scalar or a `(n,)` array."""
    w0, gamma, f, A = (np.asarray(v, dtype="float64") for v in (w0, gamma, f, A))

    def field(t, y):
        theta, omega = y[..., 0], y[..., 1]
        forcing = A * w0**2 * np.cos(2 * np.pi * f * t)
        return np.stack([omega, -(w0**2) * np.sin(theta) - gamma * omega + forcing], axis=-1)

    return field


def sample_constants(n_episodes, rng):
    """Per-episode constants drawn uniformly from `RANGES`."""
    return {name: rng.uniform(lo, hi, n_episodes) for name, (lo, hi) in RANGES.items()}


def simulate(n_episodes=200, n_steps=50, dt=0.05, noise=0.01, seed=0, substeps=40):
    """Noisy episodes of the forced damped pendulum.

    Args:
        n_episodes: number of episodes. Defaults to `200`.
        n_steps: observed time points per episode. Defaults to `50`.
        dt: sampling interval, s. Defaults to `0.05`.
        noise: standard deviation of Gaussian observation noise, rad and
            rad/s. Defaults to `0.01`.
        seed: random seed. Defaults to `0`.
        substeps: RK4 steps (float64) per sampling interval of the
            reference solution. Defaults to `40`.

    Returns:
        `(times, observations, constants)`: times `(n_steps,)`, noisy
        episodes `(n, n_steps, 2)` (float32) and a dict of per-episode
        constants (`theta0`, `w0`, `gamma`, `f`, `A`), each `(n,)`.
    """
    rng = np.random.default_rng(seed)
    constants = sample_constants(n_episodes, rng)
    times = np.arange(n_steps) * dt
    y0 = np.stack([constants["theta0"], np.zeros(n_episodes)], -1)
    field = forced_vector_field(constants["w0"], constants["gamma"], constants["f"], constants["A"])
    clean = rk4_numpy(field, y0, times, substeps=substeps)
    observed = clean + noise * rng.standard_normal(clean.shape)
    return times.astype("float32"), observed.astype("float32"), constants
