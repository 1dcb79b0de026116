"""Damped pendulum observed through rendered frames.

The dynamics are those of `keras_hybrid.systems.pendulum`
(`theta'' = -w0^2 sin(theta) - gamma theta'`, `w0 = 1` rad/s,
`gamma = 0.2` /s); only the frames are observed: a Gaussian blob (the
bob) on a small square grid, at `length * (sin(theta), cos(theta))` from
a pivot at the centre of the frame, with Gaussian pixel noise.

Frame coordinates: `x` grows to the right and `y` downwards, both in
`[-1, 1]` across the frame (pixel centres at `(i + 0.5) / size * 2 - 1`),
so `theta = 0` puts the bob straight below the pivot and
`theta = pi / 2` to its right.
"""

import numpy as np

from keras_hybrid.systems._checks import check_constants, check_count, check_sampling, check_seed
from keras_hybrid.systems.pendulum import _initial_states, damped_vector_field, rk4_numpy

TRUE_CONSTANTS = {"w0": 1.0, "gamma": 0.2}
SIZE = 16
LENGTH = 0.6
BLOB_WIDTH = 0.3


def pixel_centres(size=SIZE):
    """Coordinates of the pixel centres along one axis, in `[-1, 1]`."""
    size = _check_size(size)
    return (np.arange(size) + 0.5) / size * 2.0 - 1.0


def bob_position(theta, length=LENGTH):
    """`(x, y)` of the bob in frame coordinates (`y` downwards)."""
    theta = np.asarray(theta, "float64")
    return length * np.sin(theta), length * np.cos(theta)


def render(theta, size=SIZE, length=LENGTH, width=BLOB_WIDTH):
    """Frames of the pendulum at angles `theta` (NumPy, float64).

    Each frame is `exp(-d^2 / (2 width^2))`, `d` the distance of the pixel
    centre from the bob; the peak is 1 when the bob sits on a pixel centre.

    Args:
        theta: angles, rad, any shape `s`; `0` is straight down.
        size: frame side in pixels. Defaults to `16`.
        length: distance of the bob from the pivot (the frame's centre),
            in frame units (the frame spans `[-1, 1]`). Defaults to `0.6`.
        width: standard deviation of the blob, frame units. Defaults to
            `0.3`.

    Returns:
        Frames of shape `s + (size, size)`, rows top to bottom.
    """
    size = _check_size(size)
    if not np.isfinite(length) or length <= 0 or length >= 1:
        raise ValueError(f"`length` must be in (0, 1) (frame units). Received: length={length!r}")
    if not np.isfinite(width) or width <= 0:
        raise ValueError(f"`width` must be positive. Received: width={width!r}")
    bx, by = bob_position(theta, length)
    grid = pixel_centres(size)
    dx = grid - bx[..., None]  # (..., size): columns
    dy = grid - by[..., None]  # (..., size): rows
    return np.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2.0 * width**2))


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 4:
        raise ValueError(f"`size` must be an integer >= 4. Received: size={size!r}")
    return int(size)


def simulate(n_trajectories=200, n_steps=25, dt=0.1, noise=0.05, size=SIZE, width=BLOB_WIDTH, w0=1.0, gamma=0.2,
             seed=0):
    """Rendered, noisy frames of damped pendulum trajectories.

    Initial angles are uniform in [-1.57, 1.57] rad and angular velocities
    uniform in [-1, 1] rad/s (as in `pendulum.simulate`).

    Args:
        n_trajectories: number of trajectories. Defaults to `200`.
        n_steps: frames per trajectory. Defaults to `25`.
        dt: time between frames, s. Defaults to `0.1`.
        noise: standard deviation of the Gaussian pixel noise (the blob's
            peak is 1). Defaults to `0.05`.
        size: frame side in pixels. Defaults to `16`.
        width: standard deviation of the blob, frame units (see `render`).
            Defaults to `0.3`.
        w0: natural frequency, rad/s. Defaults to `1.0`.
        gamma: damping rate, 1/s. Defaults to `0.2`.
        seed: random seed. Defaults to `0`.

    Returns:
        `(times, frames, states)`: times `(n_steps,)`, noisy frames
        `(n, n_steps, size, size)` and the noise-free states
        `(theta, theta')` `(n, n_steps, 2)`, all float32.
    """
    check_count("n_trajectories", n_trajectories)
    check_sampling(n_steps, dt, noise)
    check_constants({"w0": w0, "gamma": gamma})
    check_seed(seed)
    rng = np.random.default_rng(seed)
    y0 = _initial_states(rng, n_trajectories)
    times = np.arange(n_steps) * dt
    states = rk4_numpy(damped_vector_field(w0, gamma), y0, times)
    frames = render(states[..., 0], size=size, width=width)
    frames = frames + noise * rng.standard_normal(frames.shape)
    return times.astype("float32"), frames.astype("float32"), states.astype("float32")
