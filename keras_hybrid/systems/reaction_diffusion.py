"""FitzHugh-Nagumo reaction-diffusion on a 32 x 32 grid (APHYNITY setting).

True dynamics on [-1, 1]^2 with zero-flux (Neumann) boundaries:

```
du/dt = a Lap(u) + u - u^3 - k - v
dv/dt = b Lap(v) + u - v
```

with `a = 1e-3`, `b = 5e-3`, `k = 5e-3`. The grid is cell-centred,
`dx = 2 / 32`, and `Lap` is the 5-point Laplacian with mirrored ghost
cells, so diffusion alone conserves the total of `u` and of `v` exactly.
Initial states are uniform noise in [0, 1] per cell. The hybrid model
knows the diffusion terms with `a`, `b` unknown; a small CNN supplies the
reaction.

The state is flattened channels-last: `y[..., (i * 32 + j) * 2 + c]` is
channel `c` (0: `u`, 1: `v`) of cell `(i, j)`, so a trajectory fits
`ODELayer` (`(batch, 2048)` states).

Reference:
    Yin et al., "Augmenting Physical Models with Deep Networks for Complex
    Dynamics Forecasting" (APHYNITY), arXiv:2010.04456.
"""

import keras
import numpy as np

from keras_hybrid.systems._checks import check_constants, check_count, check_sampling, check_seed
from keras_hybrid.systems.pendulum import rk4_numpy

GRID = 32
DX = 2.0 / GRID
TRUE_CONSTANTS = {"a": 1e-3, "b": 5e-3, "k": 5e-3}
# The model's constants are `a` and `b` in units of 1e-2 (true values 0.1
# and 0.5), where the softplus constraint is close to logarithmic and the
# optimizer moves them at a useful relative rate.
SCALE = 1e-2


def laplacian_numpy(fields):
    """5-point Laplacian with Neumann boundaries of `(..., 32, 32, c)`."""
    padded = np.concatenate([fields[..., :1, :, :], fields, fields[..., -1:, :, :]], axis=-3)
    padded = np.concatenate([padded[..., :, :1, :], padded, padded[..., :, -1:, :]], axis=-2)
    center = padded[..., 1:-1, 1:-1, :]
    return (
        padded[..., :-2, 1:-1, :]
        + padded[..., 2:, 1:-1, :]
        + padded[..., 1:-1, :-2, :]
        + padded[..., 1:-1, 2:, :]
        - 4 * center
    ) / DX**2


def fhn_vector_field(a, b, k, reaction=True):
    """NumPy vector field on flattened states `(..., 2048)`."""

    def field(t, y):
        fields = y.reshape(y.shape[:-1] + (GRID, GRID, 2))
        lap = laplacian_numpy(fields)
        u, v = fields[..., 0], fields[..., 1]
        du = a * lap[..., 0]
        dv = b * lap[..., 1]
        if reaction:
            du = du + u - u**3 - k - v
            dv = dv + u - v
        return np.stack([du, dv], axis=-1).reshape(y.shape)

    return field


def simulate(n_trajectories=16, n_steps=16, dt=0.1, noise=0.0, seed=0, substeps=20, reaction=True, **constants):
    """Trajectories of the FitzHugh-Nagumo system.

    Args:
        n_trajectories: number of trajectories. Defaults to `16`.
        n_steps: observed time points. Defaults to `16` (t in [0, 1.5]).
        dt: sampling interval. Defaults to `0.1`.
        noise: standard deviation of Gaussian observation noise. Defaults
            to `0.0`.
        seed: random seed. Defaults to `0`.
        substeps: RK4 steps (float64) per sampling interval. Defaults to
            `20`.
        reaction: include the reaction terms (`False`: pure diffusion).
            Defaults to `True`.
        **constants: overrides of `TRUE_CONSTANTS` (`a`, `b`, `k`).

    Returns:
        `(times, observations)`: times `(n_steps,)` and trajectories
        `(n, n_steps, 2048)`, float32.
    """
    unknown = sorted(set(constants) - set(TRUE_CONSTANTS))
    if unknown:
        raise ValueError(f"Unknown constants {unknown}. Valid: {sorted(TRUE_CONSTANTS)}")
    values = {**TRUE_CONSTANTS, **constants}
    check_count("n_trajectories", n_trajectories)
    check_sampling(n_steps, dt, noise)
    check_count("substeps", substeps)
    check_constants(values)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    times = np.arange(n_steps) * dt
    y0 = rng.uniform(0.0, 1.0, (n_trajectories, GRID * GRID * 2))
    clean = rk4_numpy(fhn_vector_field(reaction=reaction, **values), y0, times, substeps=substeps)
    observed = clean + noise * rng.standard_normal(clean.shape)
    return times.astype("float32"), observed.astype("float32")


def _pad_neumann(x, axis):
    first = keras.ops.take(x, [0], axis=axis)
    last = keras.ops.take(x, [x.shape[axis] - 1], axis=axis)
    return keras.ops.concatenate([first, x, last], axis=axis)


@keras.saving.register_keras_serializable(package="keras_hybrid")
def fhn_diffusion(t, y, constants):
    """Physics part: `a Lap(u)`, `b Lap(v)` on flattened states.

    `constants["a"]` and `constants["b"]` are in units of 1e-2 (`SCALE`).
    """
    fields = keras.ops.reshape(y, (-1, GRID, GRID, 2))
    padded = _pad_neumann(_pad_neumann(fields, 1), 2)
    lap = (
        padded[:, :-2, 1:-1]
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
        - 4.0 * fields
    ) / DX**2
    coeff = keras.ops.stack([constants["a"], constants["b"]]) * SCALE
    return keras.ops.reshape(lap * coeff, keras.ops.shape(y))
