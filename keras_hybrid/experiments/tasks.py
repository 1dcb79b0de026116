"""The ODE systems of the experiments: data, hybrid models, metrics.

Each task class gives `config(quick)`, `data(seed, cfg)`,
`build(cfg, training, seed, times) -> (model, ode_layer)` and
`evaluate(model, ode_layer, data) -> dict` (constants, errors, net share).
"""

import keras
import numpy as np
from keras import ops

from keras_hybrid.constants import PhysicalConstant
from keras_hybrid.experiments import methods as methods_lib
from keras_hybrid.layers import ODELayer, physical_constants
from keras_hybrid.models import HybridModel
from keras_hybrid.systems import duffing, forced_pendulum, pendulum, pendulum_images, reaction_diffusion

TEST_SEED = 10_000
VAL_SEED_OFFSET = 1_000


def _mlp(n_in, n_out, hidden, seed, regularizer, name="correction"):
    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input((n_in,)),
            keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed), kernel_regularizer=regularizer),
            keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed + 1), kernel_regularizer=regularizer),
            keras.layers.Dense(n_out, kernel_initializer=init(seed + 2), kernel_regularizer=regularizer),
        ],
        name=name,
    )


def _finish(ode_layer, trajectory, training, inputs, context=None, name="hybrid"):
    if training.penalty:
        trajectory = methods_lib.CorrectionPenalty(ode_layer, training.penalty, name="minnorm")(
            trajectory, context=context
        )
    return HybridModel(inputs, trajectory, sam=training.sam, name=name)


def _errors(estimates, truths):
    """Mean absolute error, relative error and squared error over the
    constants (arrays allowed: per-episode values are averaged too)."""
    diff = {k: np.asarray(estimates[k], "float64") - truths[k] for k in truths}
    abs_err = [np.mean(np.abs(d)) for d in diff.values()]
    rel_err = [np.mean(np.abs(diff[k]) / np.abs(truths[k])) for k in truths]
    sq_err = [np.mean(np.square(d)) for d in diff.values()]
    return float(np.mean(abs_err)), float(np.mean(rel_err)), float(np.mean(sq_err))


def _physics_applicable(task, method):
    """The `physics` method runs only on tasks whose `build` can drop the
    network (`fits_physics_alone`); elsewhere it would be plain training
    under another name."""
    return method != "physics" or task.fits_physics_alone


class GlobalConstantTask:
    """A system whose unknown constants are global `PhysicalConstant`s."""

    name = ""
    sweeps = {}
    # Values used without a sweep (`--quick`): those the full run's
    # validation protocol selected (benchmarks/RESULTS.md).
    defaults = {}
    # Whether `build` honours `training.physics_only` (the `physics` method).
    fits_physics_alone = False

    def applicable(self, method, cfg):
        """Whether `method` is defined for this task and configuration."""
        return _physics_applicable(self, method)

    def data(self, seed, cfg):
        raise NotImplementedError

    def build(self, cfg, training, seed):
        raise NotImplementedError

    def physical_values(self, model):
        return physical_constants(model)

    def evaluate(self, model, ode_layer, data):
        estimates = self.physical_values(model)
        truths = self.true_constants
        param_error, param_rel_error, param_mse = _errors(estimates, truths)
        x, y = data["test"]
        share = methods_lib.net_share(ode_layer, data["times"], y)
        return {
            "constants": {k: float(v) for k, v in estimates.items()},
            "true_constants": dict(truths),
            "param_error": param_error,
            "param_rel_error": param_rel_error,
            "param_mse": param_mse,
            "net_share": share,
        }


ARCHITECTURES = ("vector_field", "output", "nonadditive")


class ArchitectureTask(GlobalConstantTask):
    """An ODE system whose network enters in one of `ARCHITECTURES`.

    `cfg["architecture"]`:

    - `"vector_field"` (default): an additive correction inside the ODE,
      `y' = f_phys(y) + f_net(features)`;
    - `"output"`: the ODE is the physics alone; a network of
      `(physics state, t)` at each observed time is added to the
      trajectory;
    - `"nonadditive"`: the same network multiplies the trajectory by
      `1 + net` (min-norm does not apply).

    Subclasses define `physics_layer(times, correction)` (the `ODELayer`
    with the unknown constants) and `correction_inputs`. The `physics`
    method (`training.physics_only`) fits the ODE without any network.
    """

    architectures = ARCHITECTURES
    fits_physics_alone = True
    correction_inputs = "state"
    state_size = 2
    hidden = 64
    # `sam-auto`'s radii: `radius_path`'s default grid. A coarser grid
    # (0, 0.1, 0.3, 1) missed the useful radii of the `output`
    # architecture, where 0.03 already recovers the pendulum's `w0` and 0.1
    # fits the validation data 1.7-5.7x worse than plain training
    # (benchmarks/RESULTS.md, "Architecture-agnostic benchmark at full
    # configuration").
    auto_rhos = None

    def physics_layer(self, times, correction=None):
        raise NotImplementedError

    def applicable(self, method, cfg):
        """min-norm penalizes an additive correction only."""
        if method == "minnorm" and cfg.get("architecture") == "nonadditive":
            return False
        return super().applicable(method, cfg)

    def build(self, cfg, training, seed, times):
        architecture = cfg.get("architecture", "vector_field")
        if architecture not in self.architectures:
            raise ValueError(
                f"`architecture` must be one of {list(self.architectures)} for {self.name!r}. "
                f"Received: architecture={architecture!r}"
            )
        n = self.state_size
        reg = training.kernel_regularizer
        y0 = keras.Input((n,), name="y0")
        if training.physics_only:
            ode_layer = self.physics_layer(times)
            return HybridModel(y0, ode_layer(y0), name=f"{self.name}_physics"), ode_layer
        if architecture == "vector_field":
            n_in = n + (1 if self.correction_inputs == "state_and_time" else 0)
            ode_layer = self.physics_layer(times, correction=_mlp(n_in, n, self.hidden, seed, reg))
            return _finish(ode_layer, ode_layer(y0), training, y0, name=f"{self.name}_hybrid"), ode_layer
        # Output-level architectures: the ODE is the physics alone; a network
        # of (physics state, t) at each observed time corrects the
        # trajectory, additively ("output") or by a factor ("nonadditive").
        ode_layer = self.physics_layer(times)
        physics = ode_layer(y0)
        features = AppendTime(times, name="append_time")(physics)
        net = keras.layers.TimeDistributed(_mlp(n + 1, n, self.hidden, seed, reg), name="net")(features)
        if architecture == "output":
            output = keras.layers.Add(name="observation")([physics, net])
            if training.penalty:
                output = methods_lib.OutputPenalty(training.penalty, name="minnorm")([output, net])
        else:
            factor = keras.layers.Rescaling(1.0, offset=1.0, name="one_plus_net")(net)
            output = keras.layers.Multiply(name="observation")([physics, factor])
        model = HybridModel(y0, output, sam=training.sam, name=f"{self.name}_{architecture}_hybrid")
        model._physics_output = keras.Model(y0, physics, name="physics_output")
        return model, ode_layer

    def evaluate(self, model, ode_layer, data):
        result = super().evaluate(model, ode_layer, data)
        if hasattr(model, "_physics_output"):
            # Share of the observation that is not the physics trajectory.
            x, _ = data["test"]
            full = model.predict(x, verbose=0)
            physics = model._physics_output.predict(x, verbose=0)
            result["net_share"] = float(np.linalg.norm(full - physics) / max(np.linalg.norm(full), 1e-30))
        return result


class PendulumTask(ArchitectureTask):
    """Damped pendulum, one global `w0` (the demo's setting)."""

    name = "pendulum"
    true_constants = {"w0": pendulum.TRUE_CONSTANTS["w0"]}
    sweeps = {
        "l2": [1e-5, 1e-4, 1e-3],
        "minnorm": [0.01, 0.1, 1.0],
        "sam": [0.05, 0.3],
        "sam-neural": [0.03, 0.1, 0.3, 1.0],
        "asam": [0.1, 0.5],
    }
    defaults = {"l2": 1e-3, "minnorm": 0.01, "sam": 0.3, "sam-neural": 0.3, "asam": 0.1}

    def config(self, quick):
        if quick:
            return dict(n_train=100, n_val=50, n_test=50, epochs=150, batch_size=50, lr=1e-2)
        return dict(n_train=200, n_val=50, n_test=50, epochs=600, batch_size=50, lr=3e-3)

    def data(self, seed, cfg):
        times, x, y = pendulum.simulate(cfg["n_train"], seed=seed)
        _, xv, yv = pendulum.simulate(cfg["n_val"], seed=seed + VAL_SEED_OFFSET)
        _, xt, yt = pendulum.simulate(cfg["n_test"], seed=TEST_SEED)
        return {"times": times, "train": (x, y), "val": (xv, yv), "test": (xt, yt)}

    def physics_layer(self, times, correction=None):
        return ODELayer(
            pendulum.frictionless_pendulum,
            [PhysicalConstant("w0", 0.5, unit="rad/s", constraint="positive")],
            times=times,
            correction=correction,
            name="pendulum",
        )


@keras.saving.register_keras_serializable(package="keras_hybrid_experiments")
class AppendTime(keras.layers.Layer):
    """`(batch, T, d)` -> `(batch, T, d + 1)`: appends each step's time."""

    def __init__(self, times, **kwargs):
        super().__init__(**kwargs)
        self.times = [float(t) for t in np.asarray(times).ravel()]

    def call(self, states):
        t = ops.convert_to_tensor(np.asarray(self.times, "float32").reshape(1, -1, 1))
        t = ops.broadcast_to(ops.cast(t, states.dtype), (ops.shape(states)[0], len(self.times), 1))
        return ops.concatenate([states, t], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)

    def get_config(self):
        return {**super().get_config(), "times": self.times}


class DuffingTask(GlobalConstantTask):
    """Forced Duffing oscillator; physics: linear damped oscillator."""

    name = "duffing"
    true_constants = {"alpha": duffing.TRUE_CONSTANTS["alpha"], "delta": duffing.TRUE_CONSTANTS["delta"]}
    sweeps = {
        "l2": [1e-4, 1e-3],
        "minnorm": [0.1, 1.0],
        "sam": [0.05, 0.3],
        "sam-neural": [0.1, 0.3, 1.0],
        "asam": [0.1, 0.5],
    }
    defaults = {"l2": 1e-4, "minnorm": 0.1, "sam": 0.05, "sam-neural": 0.1, "asam": 0.1}

    def config(self, quick):
        if quick:
            return dict(n_train=100, n_val=50, n_test=50, epochs=120, batch_size=50, lr=5e-3)
        return dict(n_train=200, n_val=50, n_test=50, epochs=300, batch_size=50, lr=3e-3)

    def data(self, seed, cfg):
        times, y = duffing.simulate(cfg["n_train"], seed=seed)
        _, yv = duffing.simulate(cfg["n_val"], seed=seed + VAL_SEED_OFFSET)
        _, yt = duffing.simulate(cfg["n_test"], seed=TEST_SEED)
        return {"times": times, "train": (y[:, 0], y), "val": (yv[:, 0], yv), "test": (yt[:, 0], yt)}

    def build(self, cfg, training, seed, times):
        ode_layer = ODELayer(
            duffing.linear_damped_oscillator,
            [
                PhysicalConstant("alpha", 0.5, unit="1/s^2", constraint="positive"),
                PhysicalConstant("delta", 0.5, unit="1/s", constraint="positive"),
            ],
            times=times,
            correction=_mlp(3, 2, 64, seed, training.kernel_regularizer),
            correction_inputs="state_and_time",
            name="duffing",
        )
        y0 = keras.Input((2,), name="y0")
        return _finish(ode_layer, ode_layer(y0), training, y0, name="duffing_hybrid"), ode_layer


class DuffingForcingTask(ArchitectureTask):
    """Forced Duffing oscillator; physics: the unforced Duffing oscillator
    with `alpha`, `beta`, `delta` unknown; the network supplies the forcing
    `gamma cos(Omega t)`.

    The correction sees `(x, x', t)` (`correction_inputs="state_and_time"`):
    the realistic setting, in which the network could also absorb part of
    the physics, and which the training method must resolve. A network of
    `t` alone would make the split identifiable by construction.
    """

    name = "duffing_forcing"
    correction_inputs = "state_and_time"
    true_constants = {k: duffing.TRUE_CONSTANTS[k] for k in ("alpha", "beta", "delta")}
    # The same data as `duffing`, hence its sweeps, configurations and
    # defaults (the latter not selected by a full run of this task).
    sweeps = DuffingTask.sweeps
    defaults = DuffingTask.defaults

    def config(self, quick):
        return DuffingTask.config(self, quick)

    def data(self, seed, cfg):
        return DuffingTask.data(self, seed, cfg)

    def physics_layer(self, times, correction=None):
        return ODELayer(
            duffing.unforced_duffing,
            [
                PhysicalConstant("alpha", 0.5, unit="1/s^2", constraint="positive"),
                PhysicalConstant("beta", 0.5, unit="1/s^2", constraint="positive"),
                PhysicalConstant("delta", 0.5, unit="1/s", constraint="positive"),
            ],
            times=times,
            correction=correction,
            correction_inputs=self.correction_inputs,
            name="duffing",
        )


class ReactionDiffusionTask(GlobalConstantTask):
    """FitzHugh-Nagumo; physics: diffusion with unknown `a`, `b`."""

    name = "reaction_diffusion"
    true_constants = {"a": reaction_diffusion.TRUE_CONSTANTS["a"], "b": reaction_diffusion.TRUE_CONSTANTS["b"]}
    # A one-value list fixes the hyperparameter (no sweep): this system is
    # the most expensive, so only neural-only SAM is swept.
    sweeps = {
        "l2": [1e-3],
        "minnorm": [0.1],
        "sam": [0.05],
        "sam-neural": [0.3, 1.0],
        "asam": [0.5],
    }
    defaults = {"l2": 1e-3, "minnorm": 0.1, "sam": 0.05, "sam-neural": 0.3, "asam": 0.5}

    def config(self, quick):
        if quick:
            return dict(n_train=8, n_val=4, n_test=4, n_steps=6, epochs=40, batch_size=8, lr=1e-2, jit=False)
        return dict(n_train=8, n_val=4, n_test=4, n_steps=10, epochs=100, batch_size=8, lr=1e-2, jit=False)

    def data(self, seed, cfg):
        steps = cfg["n_steps"]
        times, y = reaction_diffusion.simulate(cfg["n_train"], n_steps=steps, seed=seed)
        _, yv = reaction_diffusion.simulate(cfg["n_val"], n_steps=steps, seed=seed + VAL_SEED_OFFSET)
        _, yt = reaction_diffusion.simulate(cfg["n_test"], n_steps=steps, seed=TEST_SEED)
        return {"times": times, "train": (y[:, 0], y), "val": (yv[:, 0], yv), "test": (yt[:, 0], yt)}

    def build(self, cfg, training, seed, times):
        init = keras.initializers.GlorotUniform
        reg = training.kernel_regularizer
        n = reaction_diffusion.GRID
        cnn = keras.Sequential(
            [
                keras.Input((n * n * 2,)),
                keras.layers.Reshape((n, n, 2)),
                keras.layers.Conv2D(16, 3, padding="same", activation="tanh",
                                    kernel_initializer=init(seed), kernel_regularizer=reg),
                keras.layers.Conv2D(16, 1, activation="tanh", kernel_initializer=init(seed + 1),
                                    kernel_regularizer=reg),
                keras.layers.Conv2D(2, 1, kernel_initializer=init(seed + 2), kernel_regularizer=reg),
                keras.layers.Reshape((n * n * 2,)),
            ],
            name="correction",
        )
        unit = "1e-2 L^2/T"
        ode_layer = ODELayer(
            reaction_diffusion.fhn_diffusion,
            [
                PhysicalConstant("a", 0.3, unit=unit, constraint="positive"),
                PhysicalConstant("b", 0.3, unit=unit, constraint="positive"),
            ],
            times=times,
            correction=cnn,
            name="fhn",
        )
        y0 = keras.Input((n * n * 2,), name="y0")
        return _finish(ode_layer, ode_layer(y0), training, y0, name="fhn_hybrid"), ode_layer

    def physical_values(self, model):
        scale = reaction_diffusion.SCALE
        return {k: v * scale for k, v in physical_constants(model).items()}


class EpisodeConstantTask:
    """A system whose `w0` differs per episode and is inferred by an
    encoder from the observed episode (`model._encoder_outputs` gives
    `(w0, context)`; `context` is `None` without one)."""

    encoder_layers = ()
    fits_physics_alone = False

    def applicable(self, method, cfg):
        """Whether `method` is defined for this task and configuration."""
        return _physics_applicable(self, method)

    def evaluate(self, model, ode_layer, data):
        x, y = data["test"]
        outputs = model._encoder_outputs.predict(x, verbose=0)
        w0, context = (outputs, None) if isinstance(outputs, np.ndarray) else outputs
        true_w0 = data["test_constants"]["w0"]
        param_error, param_rel_error, param_mse = _errors({"w0": w0}, {"w0": true_w0})
        share = methods_lib.net_share(
            ode_layer, data["times"], y, constants={"w0": w0.astype("float32")}, context=context
        )
        return {
            "constants": {"w0_mean": float(np.mean(w0)), "w0_corr": float(np.corrcoef(w0, true_w0)[0, 1])},
            "true_constants": {"w0_mean": float(np.mean(true_w0))},
            "param_error": param_error,
            "param_rel_error": param_rel_error,
            "param_mse": param_mse,
            "net_share": share,
        }

    @staticmethod
    def _sequence_encoder(sequence, seed, width):
        init = keras.initializers.GlorotUniform
        flat = keras.layers.Flatten()(sequence)
        hidden = keras.layers.Dense(width, "relu", kernel_initializer=init(seed + 10), name="encoder_1")(flat)
        hidden = keras.layers.Dense(width, "relu", kernel_initializer=init(seed + 11), name="encoder_2")(hidden)
        return flat, hidden


class PendulumEpisodesTask(EpisodeConstantTask):
    """Damped pendulum episodes with per-episode `w0` (from an encoder) and
    a shared damping that a global network supplies."""

    name = "pendulum_episodes"
    encoder_layers = ("encoder_1", "encoder_2", "encoder_out")
    sweeps = {
        "l2": [1e-4, 1e-3],
        "minnorm": [0.01, 0.1],
        "sam": [0.05, 0.3],
        "sam-neural": [0.1, 0.3],
        "asam": [0.1, 0.5],
        "sam-correction": [0.1, 0.3, 1.0],
    }
    # The full run's selections (benchmarks/RESULTS.md), used by --quick.
    defaults = {"l2": 1e-4, "minnorm": 0.01, "sam": 0.05, "sam-neural": 0.1, "asam": 0.5, "sam-correction": 0.3}

    def config(self, quick):
        if quick:
            return dict(n_train=100, n_val=50, n_test=100, epochs=300, batch_size=50, lr=3e-3)
        return dict(n_train=200, n_val=50, n_test=100, epochs=600, batch_size=50, lr=3e-3)

    def data(self, seed, cfg):
        times, y, _ = pendulum.simulate_episodes(cfg["n_train"], seed=seed)
        _, yv, _ = pendulum.simulate_episodes(cfg["n_val"], seed=seed + VAL_SEED_OFFSET)
        _, yt, wt = pendulum.simulate_episodes(cfg["n_test"], seed=TEST_SEED)
        return {"times": times, "train": (y, y), "val": (yv, yv), "test": (yt, yt),
                "test_constants": {"w0": wt}}

    def build(self, cfg, training, seed, times):
        init = keras.initializers.GlorotUniform
        sequence = keras.Input((len(times), 2), name="observed")
        _, hidden = self._sequence_encoder(sequence, seed, 64)
        head = keras.layers.Dense(1, kernel_initializer=init(seed + 12), name="encoder_out")(hidden)
        # Starts near 1.3 rad/s, mid-range.
        w0 = keras.layers.Activation("softplus", name="w0")(head[:, 0] + 1.0)
        ode_layer = ODELayer(
            pendulum.frictionless_pendulum,
            [PhysicalConstant("w0", 1.3, unit="rad/s", constraint="positive", trainable=False)],
            times=times,
            correction=_mlp(2, 2, 32, seed, training.kernel_regularizer),
            name="pendulum",
        )
        trajectory = ode_layer(sequence[:, 0, :], constants={"w0": w0})
        model = _finish(ode_layer, trajectory, training, sequence, name="pendulum_episodes_hybrid")
        model._encoder_outputs = keras.Model(sequence, w0, name="encoder")
        return model, ode_layer


class ForcedPendulumTask(EpisodeConstantTask):
    """Forced damped pendulum: per-episode `w0` and a latent context
    inferred by an encoder from the observed episode."""

    name = "forced_pendulum"
    encoder_layers = ("encoder_1", "encoder_2", "encoder_out", "encoder_amplitudes")
    latent = 4
    n_frequencies = 48
    amplitude_scale = 30.0
    # minnorm's lambda is small because the forcing the network must supply
    # reaches a few hundred rad/s^2 (||f_net||^2 ~ 1e4).
    sweeps = {
        "l2": [1e-4, 1e-3],
        "minnorm": [1e-6, 1e-5],
        "sam": [0.05, 0.3],
        "sam-neural": [0.03, 0.1, 0.3],
        "asam": [0.1, 0.5],
        "sam-correction": [0.1, 0.3, 1.0],
    }
    # The full run's selections (benchmarks/RESULTS.md), used by --quick.
    defaults = {"l2": 1e-3, "minnorm": 1e-5, "sam": 0.05, "sam-neural": 0.03, "asam": 0.1, "sam-correction": 0.1}

    def config(self, quick):
        if quick:
            return dict(n_train=100, n_val=50, n_test=50, epochs=40, batch_size=50, lr=3e-3, clipnorm=10.0)
        # Without clipping, plain training diverged now and then (loss
        # spikes of 50x) and lost the w0 estimate it had reached.
        return dict(n_train=400, n_val=100, n_test=100, epochs=200, batch_size=50, lr=3e-3, clipnorm=10.0)

    def data(self, seed, cfg):
        times, y, _ = forced_pendulum.simulate(cfg["n_train"], seed=seed)
        _, yv, cv = forced_pendulum.simulate(cfg["n_val"], seed=seed + VAL_SEED_OFFSET)
        _, yt, ct = forced_pendulum.simulate(cfg["n_test"], seed=TEST_SEED)
        return {
            "times": times,
            "train": (y, y),
            "val": (yv, yv),
            "test": (yt, yt),
            "test_constants": ct,
        }

    def build(self, cfg, training, seed, times):
        init = keras.initializers.GlorotUniform
        n_times = len(times)
        k = self.n_frequencies
        sequence = keras.Input((n_times, 2), name="observed")
        flat, hidden = self._sequence_encoder(sequence, seed, 128)
        head = keras.layers.Dense(1 + self.latent, kernel_initializer=init(seed + 12), name="encoder_out")(hidden)
        # w0 > 0 through softplus; starts near 1.5 rad/s (mid-range).
        w0 = keras.layers.Activation("softplus", name="w0")(head[:, 0] + 1.3)
        # Forcing amplitudes: a linear read-out of the observed sequence
        # (plus the hidden features), scaled so that Adam's step size
        # reaches forcing of a few hundred rad/s^2 within the budget.
        amplitudes = keras.layers.Dense(2 * k, kernel_initializer="zeros", name="encoder_amplitudes")(
            keras.layers.Concatenate()([flat, hidden])
        )
        amplitudes = keras.layers.Rescaling(self.amplitude_scale, name="amplitudes")(amplitudes)
        context = keras.layers.Concatenate(name="context")([amplitudes, head[:, 1:]])
        ode_layer = ODELayer(
            pendulum.frictionless_pendulum,
            # Per-episode values replace it at call time; kept for units.
            [PhysicalConstant("w0", 1.5, unit="rad/s", constraint="positive", trainable=False)],
            times=times,
            substeps=2,
            correction=forced_pendulum.ForcingBankCorrection(
                2, n_frequencies=k, seed=seed, kernel_regularizer=training.kernel_regularizer, name="correction"
            ),
            correction_inputs="state_and_time",
            context_size=2 * k + self.latent,
            name="forced_pendulum",
        )
        trajectory = ode_layer(sequence[:, 0, :], constants={"w0": w0}, context=context)
        model = _finish(ode_layer, trajectory, training, sequence, context=context, name="forced_pendulum_hybrid")
        model._encoder_outputs = keras.Model(sequence, [w0, context], name="encoder")
        return model, ode_layer


@keras.saving.register_keras_serializable(package="keras_hybrid_experiments")
class AngleFeatures(keras.layers.Layer):
    """`(..., 2)` states `(theta, theta')` -> `(..., 2)` `(cos theta, sin theta)`:
    what a frame of a rigid pendulum can depend on."""

    def call(self, states):
        theta = states[..., 0]
        return ops.stack([ops.cos(theta), ops.sin(theta)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


def _check_layer_args(size, **positive):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 4:
        raise ValueError(f"`size` must be an integer >= 4. Received: size={size!r}")
    for name, value in positive.items():
        if not np.isfinite(value) or value <= 0 or (name == "length" and value >= 1):
            bound = "in (0, 1)" if name == "length" else "positive"
            raise ValueError(f"`{name}` must be {bound}. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="keras_hybrid_experiments")
class BlobRenderer(keras.layers.Layer):
    """`(..., 2)` states -> `(..., size * size)` frames: a Gaussian blob at
    `length * (sin theta, cos theta)` from the frame's centre (the form of
    `pendulum_images.render`), with `length` and `width` trainable
    (positive, `exp` of a raw weight; not physical constants).

    Args:
        size: frame side in pixels (>= 4).
        length: initial arm length, frame units, in (0, 1). Defaults to
            `0.5`.
        width: initial standard deviation of the blob, frame units, > 0.
            Defaults to `0.2`.
    """

    def __init__(self, size, length=0.5, width=0.2, **kwargs):
        super().__init__(**kwargs)
        _check_layer_args(size, length=length, width=width)
        self.size = int(size)
        self.length = float(length)
        self.width = float(width)

    def build(self, input_shape):
        self.log_length = self.add_weight(
            name="log_length", shape=(), initializer=keras.initializers.Constant(np.log(self.length)))
        self.log_width = self.add_weight(
            name="log_width", shape=(), initializer=keras.initializers.Constant(np.log(self.width)))

    def call(self, states):
        grid = ops.convert_to_tensor(pendulum_images.pixel_centres(self.size).astype("float32"))
        theta = states[..., 0:1]
        length, width = ops.exp(self.log_length), ops.exp(self.log_width)
        bx, by = length * ops.sin(theta), length * ops.cos(theta)
        dx2 = ops.square(grid - bx)  # (..., size): columns
        dy2 = ops.square(grid - by)  # (..., size): rows
        d2 = ops.expand_dims(dy2, -1) + ops.expand_dims(dx2, -2)
        frames = ops.exp(-d2 / (2.0 * ops.square(width)))
        return ops.reshape(frames, (*ops.shape(states)[:-1], self.size * self.size))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.size * self.size)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "length": self.length, "width": self.width}


@keras.saving.register_keras_serializable(package="keras_hybrid_experiments")
class SoftArgmax(keras.layers.Layer):
    """`(..., size * size)` frames -> `(..., 2)` keypoints: the mean pixel
    position `(x, y)` under `softmax(sharpness * frame)` (frame coordinates
    of `pendulum_images`; `sharpness` trainable, positive).

    Args:
        size: frame side in pixels (>= 4); frames are flattened row by row.
        sharpness: initial inverse temperature of the softmax, > 0
            (large: the brightest pixel; small: the frame's centre).
            Defaults to `10.0`.
    """

    def __init__(self, size, sharpness=10.0, **kwargs):
        super().__init__(**kwargs)
        _check_layer_args(size, sharpness=sharpness)
        self.size = int(size)
        self.sharpness = float(sharpness)

    def build(self, input_shape):
        self.log_sharpness = self.add_weight(
            name="log_sharpness", shape=(), initializer=keras.initializers.Constant(np.log(self.sharpness)))

    def call(self, frames):
        grid = pendulum_images.pixel_centres(self.size).astype("float32")
        gx = ops.convert_to_tensor(np.tile(grid, self.size))  # columns vary fastest
        gy = ops.convert_to_tensor(np.repeat(grid, self.size))
        weights = ops.softmax(ops.exp(self.log_sharpness) * frames, axis=-1)
        return ops.stack([ops.sum(weights * gx, axis=-1), ops.sum(weights * gy, axis=-1)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "sharpness": self.sharpness}


class PendulumImagesTask(GlobalConstantTask):
    """Damped pendulum seen through rendered frames, one global `w0`.

    An encoder of the first frames (a soft-argmax keypoint per frame, a
    small network of the keypoints) gives the initial state
    `(theta, theta')`; the `ODELayer` (frictionless physics with unknown
    `w0` plus an additive correction MLP in the vector field) integrates
    it; a decoder renders each predicted state as a frame: a blob renderer
    with learned arm length and blob width plus a learned residual image
    (an MLP of `(cos theta, sin theta)`). Inputs `(batch, 3, 256)` (the
    first 3 frames, flattened), outputs `(batch, 25, 256)` (all frames).
    The result also gives `angle_corr`, the correlation of the latent
    angle with the true angle over the test frames.
    """

    name = "pendulum_images"
    true_constants = {"w0": pendulum_images.TRUE_CONSTANTS["w0"]}
    n_input_frames = 3
    # `sam-correction` leaves these unperturbed: it perturbs the
    # correction only.
    encoder_layers = ("encoder_keypoints", "encoder_1", "encoder_out", "decoder", "decoder_blob")
    # The physics part alone needs the encoder and decoder, so the
    # radius path's physics-only reference (network zeroed) does not apply.
    additive = False
    # Radii of `sam-auto` (fewer than the library's default path: each
    # radius is one more fit of the image model).
    auto_rhos = (0.0, 0.03, 0.1, 0.3)
    sweeps = {
        "l2": [1e-4, 1e-3],
        "minnorm": [0.01, 0.1],
        "sam": [0.03, 0.1],
        "sam-neural": [0.03, 0.1],
        "asam": [0.1, 0.5],
        "sam-correction": [0.1, 0.3],
    }
    # The full run's selections (benchmarks/RESULTS.md); asam was not run
    # in full (its value is a guess).
    defaults = {"l2": 1e-3, "minnorm": 0.1, "sam": 0.1, "sam-neural": 0.1, "asam": 0.1, "sam-correction": 0.1}

    def config(self, quick):
        # 16 x 16 frames, 25 per sequence (dt 0.1 s), 3 of them encoded.
        if quick:
            return dict(n_train=64, n_val=32, n_test=32, n_steps=25, epochs=60, batch_size=64, lr=1e-2, jit=False)
        return dict(n_train=128, n_val=32, n_test=50, n_steps=25, epochs=300, batch_size=64, lr=1e-2, jit=False)

    def _split(self, cfg, n, seed):
        times, frames, states = pendulum_images.simulate(n, n_steps=cfg["n_steps"], seed=seed)
        frames = frames.reshape(n, len(times), -1)
        return times, frames[:, : self.n_input_frames], frames, states

    def data(self, seed, cfg):
        times, x, y, _ = self._split(cfg, cfg["n_train"], seed)
        _, xv, yv, _ = self._split(cfg, cfg["n_val"], seed + VAL_SEED_OFFSET)
        _, xt, yt, st = self._split(cfg, cfg["n_test"], TEST_SEED)
        return {"times": times, "train": (x, y), "val": (xv, yv), "test": (xt, yt), "test_states": st}

    def build(self, cfg, training, seed, times):
        init = keras.initializers.GlorotUniform
        pixels = pendulum_images.SIZE**2
        frames = keras.Input((self.n_input_frames, pixels), name="first_frames")
        # Each of the first frames gives a keypoint (soft-argmax of the
        # frame); a small network of the keypoints gives (theta0, theta0'),
        # so the velocity comes from differences between frames.
        keypoints = SoftArgmax(pendulum_images.SIZE, name="encoder_keypoints")(frames)
        keypoints = keras.layers.Flatten(name="encoder_flatten")(keypoints)
        hidden = keras.layers.Dense(32, "tanh", kernel_initializer=init(seed + 10), name="encoder_1")(keypoints)
        y0 = keras.layers.Dense(2, kernel_initializer=init(seed + 11), name="encoder_out")(hidden)
        ode_layer = ODELayer(
            pendulum.frictionless_pendulum,
            [PhysicalConstant("w0", 0.5, unit="rad/s", constraint="positive")],
            times=times,
            correction=_mlp(2, 2, 32, seed, training.kernel_regularizer),
            name="pendulum",
        )
        trajectory = ode_layer(y0)
        if training.penalty:
            trajectory = methods_lib.CorrectionPenalty(ode_layer, training.penalty, name="minnorm")(trajectory)
        # Decoder: a blob renderer with learned geometry plus a learned
        # residual image of (cos theta, sin theta), zero at the start.
        blob = BlobRenderer(pendulum_images.SIZE, name="decoder_blob")(trajectory)
        features = AngleFeatures(name="angle_features")(trajectory)
        decoder = _mlp(2, pixels, 64, seed + 20, None, name="decoder")
        last = decoder.layers[-1]
        last.kernel.assign(np.zeros(last.kernel.shape, "float32"))
        residual = keras.layers.TimeDistributed(decoder, name="render")(features)
        rendered = keras.layers.Add(name="frames")([blob, residual])
        model = HybridModel(frames, rendered, sam=training.sam, name="pendulum_images_hybrid")
        model._latent = keras.Model(frames, trajectory, name="latent")
        return model, ode_layer

    def evaluate(self, model, ode_layer, data):
        estimates = self.physical_values(model)
        param_error, param_rel_error, param_mse = _errors(estimates, self.true_constants)
        # The vector field's parts at the true test states (the latent
        # angle is the true one only when the decoder learned the frames'
        # geometry; `angle_corr` measures how far it did).
        states = data["test_states"]
        share = methods_lib.net_share(ode_layer, data["times"], states)
        latent = model._latent.predict(data["test"][0], verbose=0)
        return {
            "constants": {k: float(v) for k, v in estimates.items()},
            "true_constants": dict(self.true_constants),
            "param_error": param_error,
            "param_rel_error": param_rel_error,
            "param_mse": param_mse,
            "net_share": share,
            "angle_corr": float(np.corrcoef(np.ravel(latent[..., 0]), np.ravel(states[..., 0]))[0, 1]),
        }
