"""Forced damped pendulum with per-episode constants (Phys-VAE setting).

True dynamics (`theta` in rad, time in s), one set of constants per episode:

```
theta'' = -w0^2 sin(theta) - gamma theta' + A w0^2 cos(2 pi f t)
```

with `theta(0)` uniform in [-1.57, 1.57] rad, `theta'(0) = 0`, `w0` uniform
in [0.785, 3.14] rad/s, `gamma` in [0, 0.8] 1/s, `f` in [3.14, 6.28] Hz and
`A` in [0, 40] rad. The hybrid model knows only `theta'' = -w0^2 sin(theta)`;
an encoder infers each episode's `w0`, forcing amplitudes and a latent
context from the observed sequence, and a network of `(theta, theta', t,
context)` (`ForcingBankCorrection`) supplies the damping and the forcing.

Reference:
    Takeishi & Kalousis, "Physics-Integrated Variational Autoencoders for
    Robust and Interpretable Generative Modeling", arXiv:2102.13156.
"""

import keras
import numpy as np

from keras_hybrid.systems._checks import check_count, check_sampling, check_seed
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
    check_count("n_episodes", n_episodes)
    check_sampling(n_steps, dt, noise)
    check_count("substeps", substeps)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    constants = sample_constants(n_episodes, rng)
    times = np.arange(n_steps) * dt
    y0 = np.stack([constants["theta0"], np.zeros(n_episodes)], -1)
    field = forced_vector_field(constants["w0"], constants["gamma"], constants["f"], constants["A"])
    clean = rk4_numpy(field, y0, times, substeps=substeps)
    observed = clean + noise * rng.standard_normal(clean.shape)
    return times.astype("float32"), observed.astype("float32"), constants


@keras.saving.register_keras_serializable(package="keras_hybrid")
class ForcingBankCorrection(keras.layers.Layer):
    """Correction network for episode-dependent, time-periodic dynamics.

    Input: `concat([y, t, amplitudes, z])`: the state (size `state_size`),
    the time, `2 * n_frequencies` per-episode amplitudes and a latent
    context `z`, the last two typically from an encoder. Output:

    ```
    mlp([y, z]) + route(sum_k a_k sin(w_k t) + b_k cos(w_k t))
    ```

    with a fixed bank of `n_frequencies` angular frequencies `w_k` spread
    evenly over `frequency_range`, and `route` a learned linear map from the
    scalar forcing to the state. The forcing is linear in the amplitudes,
    so an encoder can learn it by regression; learning the frequencies
    themselves by gradient descent (a sinusoid of trainable frequency)
    failed to fit forcing of 8 to 15 cycles per episode, because the loss
    is highly oscillatory in a frequency.

    Args:
        state_size: size of the state `y`.
        n_frequencies: number of frequencies in the bank. Defaults to `48`.
        frequency_range: `(lo, hi)` angular frequencies of the bank, rad per
            time unit. Defaults to `(2 pi 3.0, 2 pi 6.5)`, which covers the
            forcing frequencies 3.14 to 6.28 Hz of `simulate`.
        hidden: width of the two hidden layers of the MLP. Defaults to `64`.
        seed: seed of the initializers. Defaults to `0`.
        kernel_regularizer: regularizer of every kernel. Defaults to `None`.
        **kwargs: base layer arguments.
    """

    def __init__(self, state_size, n_frequencies=48, frequency_range=(2 * np.pi * 3.0, 2 * np.pi * 6.5),
                 hidden=64, seed=0, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.state_size = int(state_size)
        self.n_frequencies = int(n_frequencies)
        self.frequency_range = tuple(float(v) for v in frequency_range)
        if self.n_frequencies < 1 or not 0 < self.frequency_range[0] < self.frequency_range[1]:
            raise ValueError(
                "`n_frequencies` must be >= 1 and `frequency_range` must be (lo, hi) with "
                f"0 < lo < hi. Received: n_frequencies={n_frequencies!r}, "
                f"frequency_range={frequency_range!r}"
            )
        self.hidden = int(hidden)
        self.seed = int(seed)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.frequencies = np.linspace(*self.frequency_range, self.n_frequencies).astype("float32")
        init = keras.initializers.GlorotUniform
        reg = self.kernel_regularizer
        self.mlp = [
            keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed), kernel_regularizer=reg),
            keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed + 1), kernel_regularizer=reg),
            keras.layers.Dense(state_size, kernel_initializer=init(seed + 2), kernel_regularizer=reg),
        ]
        self.route = keras.layers.Dense(
            state_size, use_bias=False, kernel_initializer=init(seed + 3), kernel_regularizer=reg
        )

    def build(self, input_shape):
        n_latent = input_shape[-1] - self.state_size - 1 - 2 * self.n_frequencies
        if n_latent < 0:
            raise ValueError(
                f"ForcingBankCorrection '{self.name}' expects at least "
                f"{self.state_size + 1 + 2 * self.n_frequencies} input features (state, time, "
                f"amplitudes). Received: input_shape={tuple(input_shape)}"
            )
        batch = input_shape[0]
        self.mlp[0].build((batch, self.state_size + n_latent))
        self.mlp[1].build((batch, self.hidden))
        self.mlp[2].build((batch, self.hidden))
        self.route.build((batch, 1))

    def call(self, features):
        n, k = self.state_size, self.n_frequencies
        y, t = features[:, :n], features[:, n : n + 1]
        amplitudes, z = features[:, n + 1 : n + 1 + 2 * k], features[:, n + 1 + 2 * k :]
        h = keras.ops.concatenate([y, z], axis=-1)
        for layer in self.mlp:
            h = layer(h)
        phase = t * keras.ops.convert_to_tensor(self.frequencies)[None, :]
        waves = keras.ops.concatenate([keras.ops.sin(phase), keras.ops.cos(phase)], axis=-1)
        forcing = keras.ops.sum(waves * amplitudes, axis=-1, keepdims=True)
        return h + self.route(forcing)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.state_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "state_size": self.state_size,
                "n_frequencies": self.n_frequencies,
                "frequency_range": list(self.frequency_range),
                "hidden": self.hidden,
                "seed": self.seed,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
                if self.kernel_regularizer is not None else None,
            }
        )
        return config
