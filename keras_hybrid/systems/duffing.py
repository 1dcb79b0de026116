"""Forced Duffing oscillator: simulator and its physics part.

True dynamics (dimensionless units):

```
x'' + delta x' + alpha x + beta x^3 = gamma cos(Omega t)
```

with `alpha = 1.0`, `delta = 0.2`, `beta = 1.0`, `gamma = 0.5`,
`Omega = 1.2`; initial `x(0)`, `x'(0)` uniform in [-1, 1]; 50 samples at
`dt = 0.1` (t in [0, 4.9]); observation noise 0.01.

Two physics parts are defined for the same simulator:

- `linear_damped_oscillator` (task `duffing`): `x'' = -alpha x - delta x'`
  with `alpha`, `delta` unknown; the network supplies the cubic stiffness
  and the forcing. The cubic term is nearly collinear with `x` over the
  visited states (`minimum_norm_split`), so the smallest network does not
  give the true constants: a documented negative result.
- `unforced_duffing` (task `duffing_forcing`):
  `x'' = -alpha x - beta x^3 - delta x'` with `alpha`, `beta`, `delta`
  unknown; the network supplies the forcing `gamma cos(Omega t)`, a
  function of time alone, which the state features cannot absorb
  (`forcing_minimum_norm_split`).
"""

import keras
import numpy as np

from keras_hybrid.systems._checks import check_constants, check_count, check_sampling, check_seed
from keras_hybrid.systems.pendulum import rk4_numpy

TRUE_CONSTANTS = {"alpha": 1.0, "delta": 0.2, "beta": 1.0, "gamma": 0.5, "Omega": 1.2}


def duffing_vector_field(alpha, delta, beta, gamma, Omega):
    """NumPy vector field of the forced Duffing oscillator."""

    def field(t, y):
        x, v = y[..., 0], y[..., 1]
        accel = -delta * v - alpha * x - beta * x**3 + gamma * np.cos(Omega * t)
        return np.stack([v, accel], axis=-1)

    return field


def simulate(n_trajectories=200, n_steps=50, dt=0.1, noise=0.01, seed=0, substeps=10, **constants):
    """Noisy trajectories of the forced Duffing oscillator.

    Args:
        n_trajectories: number of trajectories. Defaults to `200`.
        n_steps: observed time points per trajectory. Defaults to `50`.
        dt: sampling interval. Defaults to `0.1`.
        noise: standard deviation of Gaussian observation noise. Defaults
            to `0.01`.
        seed: random seed. Defaults to `0`.
        substeps: RK4 steps (float64) per sampling interval. Defaults to
            `10`.
        **constants: overrides of `TRUE_CONSTANTS` (`alpha`, `delta`,
            `beta`, `gamma`, `Omega`).

    Returns:
        `(times, observations)`: times `(n_steps,)` and noisy trajectories
        `(n, n_steps, 2)`, float32.
    """
    unknown = sorted(set(constants) - set(TRUE_CONSTANTS))
    if unknown:
        raise ValueError(f"Unknown Duffing constants {unknown}. Valid: {sorted(TRUE_CONSTANTS)}")
    values = {**TRUE_CONSTANTS, **constants}
    check_count("n_trajectories", n_trajectories)
    check_sampling(n_steps, dt, noise)
    check_count("substeps", substeps)
    check_constants(values)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    times = np.arange(n_steps) * dt
    y0 = rng.uniform(-1.0, 1.0, (n_trajectories, 2))
    clean = rk4_numpy(duffing_vector_field(**values), y0, times, substeps=substeps)
    observed = clean + noise * rng.standard_normal(clean.shape)
    return times.astype("float32"), observed.astype("float32")


@keras.saving.register_keras_serializable(package="keras_hybrid")
def linear_damped_oscillator(t, y, constants):
    """Physics part: `x' = v, v' = -alpha x - delta v`."""
    x, v = y[..., 0], y[..., 1]
    return keras.ops.stack([v, -constants["alpha"] * x - constants["delta"] * v], axis=-1)


@keras.saving.register_keras_serializable(package="keras_hybrid")
def unforced_duffing(t, y, constants):
    """Physics part: `x' = v, v' = -alpha x - beta x^3 - delta v`."""
    x, v = y[..., 0], y[..., 1]
    accel = -constants["alpha"] * x - constants["beta"] * x**3 - constants["delta"] * v
    return keras.ops.stack([v, accel], axis=-1)


def forcing(t, gamma=TRUE_CONSTANTS["gamma"], Omega=TRUE_CONSTANTS["Omega"]):
    """The part `unforced_duffing` leaves out: `gamma cos(Omega t)` (NumPy)."""
    return gamma * np.cos(Omega * np.asarray(t, "float64"))


def forcing_minimum_norm_split(observations, times, **constants):
    """The `alpha`, `beta`, `delta` that leave the forcing network the least.

    Least-squares projection of the forcing `gamma cos(Omega t)` onto the
    features `(-x, -x^3, -x')` of `unforced_duffing` over the observed
    states. Because the forcing is the same function of time on every
    trajectory while the initial states are random, it is nearly orthogonal
    to those features: the minimum-norm split is close to the true one
    (compare `minimum_norm_split` of the `duffing` task).

    Args:
        observations: `(n, T, 2)` states `(x, x')`.
        times: `(T,)` their times.
        **constants: overrides of `TRUE_CONSTANTS`.

    Returns:
        Dict with `alpha`, `beta`, `delta` and `residual_ratio`, the norm of
        the network's output left at that split relative to the true
        split's (1.0: the features explain none of the forcing).
    """
    values = {**TRUE_CONSTANTS, **constants}
    x = np.asarray(observations[..., 0], "float64").ravel()
    v = np.asarray(observations[..., 1], "float64").ravel()
    t = np.broadcast_to(np.asarray(times, "float64"), np.shape(observations)[:-1]).ravel()
    missing = forcing(t, values["gamma"], values["Omega"])
    features = np.stack([-x, -(x**3), -v], axis=1)
    coef, *_ = np.linalg.lstsq(features, missing, rcond=None)
    residual = missing - features @ coef
    return {
        "alpha": float(values["alpha"] + coef[0]),
        "beta": float(values["beta"] + coef[1]),
        "delta": float(values["delta"] + coef[2]),
        "residual_ratio": float(np.linalg.norm(residual) / max(np.linalg.norm(missing), 1e-30)),
    }


def minimum_norm_split(observations, times, **constants):
    """The `alpha`, `delta` that leave the network the least to supply.

    Least-squares projection of the missing term
    `-beta x^3 + gamma cos(Omega t)` onto the physics part's features
    `(-x, -x')` over the observed states: a training method that prefers
    the smallest network output (e.g. a penalty on `||f_net||^2`) can at
    best recover these values, not the true ones, because `x^3` is
    strongly correlated with `x` over the states visited.

    Args:
        observations: `(n, T, 2)` states `(x, x')`.
        times: `(T,)` their times.
        **constants: overrides of `TRUE_CONSTANTS`.

    Returns:
        Dict with `alpha`, `delta` and `residual_ratio`, the norm of the
        network's output left at that split relative to the true split's.
    """
    values = {**TRUE_CONSTANTS, **constants}
    x = np.asarray(observations[..., 0], "float64").ravel()
    v = np.asarray(observations[..., 1], "float64").ravel()
    t = np.broadcast_to(np.asarray(times, "float64"), np.shape(observations)[:-1]).ravel()
    missing = -values["beta"] * x**3 + values["gamma"] * np.cos(values["Omega"] * t)
    features = np.stack([-x, -v], axis=1)
    coef, *_ = np.linalg.lstsq(features, missing, rcond=None)
    residual = missing - features @ coef
    return {
        "alpha": float(values["alpha"] + coef[0]),
        "delta": float(values["delta"] + coef[1]),
        "residual_ratio": float(np.linalg.norm(residual) / max(np.linalg.norm(missing), 1e-30)),
    }
