"""Reproduction of the hybrid-modeling experiments: plain training,
regularizers and SAM variants, side by side.

Run, for example:

```
python -m keras_hybrid.experiments pendulum --methods erm,sam-neural --seeds 3 --json out.json
```

Systems: `pendulum` (damped, one global `w0`), `pendulum_episodes`
(damped, per-episode `w0` inferred by an encoder, shared damping supplied
by a global network), `forced_pendulum` (forced damped pendulum,
per-episode `w0` inferred by an encoder), `duffing`
(global `alpha`, `delta`), `reaction_diffusion` (FitzHugh-Nagumo, global
diffusion coefficients `a`, `b`). Methods: `erm` (plain training), `l2`
(weight decay on the network), `minnorm` (penalty `lambda ||f_net||^2` on
the network's output, as in APHYNITY), `sam` (SAM on all parameters, one
global norm), `sam-neural` (SAM on the network weights only), `asam`
(adaptive SAM on all parameters), and, not run by default,
`sam-correction` (`sam-neural` with the encoder of per-episode constants
left unperturbed). All methods share data, model,
initialization, optimizer and number of steps.

Hyperparameters (`lambda`, `rho`) are chosen on seed 0 from the validation
prediction error only (never from the true constants): among the swept
values, the largest whose validation MSE is within `1 + tolerance` of the
best one. Metrics are measured on a fixed test set: parameter error
(absolute and relative; mean over constants, and over test episodes for
per-episode constants), test MSE of the predicted trajectories, and the
network's share `||f_net|| / ||f_phys + f_net||` of the vector field at the
observed test states.

Reference:
    Takeishi, "Sharpness-Aware Hybrid Model Learning for
    Architecture-Agnostic Parameter Estimation", arXiv:2602.06837.
"""

import argparse
import json
import os
import sys
import time

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_hybrid import _experiment_methods as methods_lib  # noqa: E402
from keras_hybrid.constants import PhysicalConstant  # noqa: E402
from keras_hybrid.layers import ODELayer, physical_constants  # noqa: E402
from keras_hybrid.models import HybridModel  # noqa: E402
from keras_hybrid.systems import duffing, forced_pendulum, pendulum, reaction_diffusion  # noqa: E402

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
    """Mean absolute and relative error over constants (arrays allowed)."""
    abs_err = [np.mean(np.abs(np.asarray(estimates[k]) - truths[k])) for k in truths]
    rel_err = [np.mean(np.abs(np.asarray(estimates[k]) - truths[k]) / np.abs(truths[k])) for k in truths]
    return float(np.mean(abs_err)), float(np.mean(rel_err))


class GlobalConstantTask:
    """A system whose unknown constants are global `PhysicalConstant`s."""

    name = ""
    sweeps = {}
    # Values used without a sweep (`--quick`): those the full run's
    # validation protocol selected (benchmarks/RESULTS.md).
    defaults = {}

    def data(self, seed, cfg):
        raise NotImplementedError

    def build(self, cfg, training, seed):
        raise NotImplementedError

    def physical_values(self, model):
        return physical_constants(model)

    def evaluate(self, model, ode_layer, data):
        estimates = self.physical_values(model)
        truths = self.true_constants
        param_error, param_rel_error = _errors(estimates, truths)
        x, y = data["test"]
        share = methods_lib.net_share(ode_layer, data["times"], y)
        return {
            "constants": {k: float(v) for k, v in estimates.items()},
            "true_constants": dict(truths),
            "param_error": param_error,
            "param_rel_error": param_rel_error,
            "net_share": share,
        }


class PendulumTask(GlobalConstantTask):
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

    def build(self, cfg, training, seed, times):
        ode_layer = ODELayer(
            pendulum.frictionless_pendulum,
            [PhysicalConstant("w0", 0.5, unit="rad/s", constraint="positive")],
            times=times,
            correction=_mlp(2, 2, 64, seed, training.kernel_regularizer),
            name="pendulum",
        )
        y0 = keras.Input((2,), name="y0")
        return _finish(ode_layer, ode_layer(y0), training, y0, name="pendulum_hybrid"), ode_layer


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

    def evaluate(self, model, ode_layer, data):
        x, y = data["test"]
        outputs = model._encoder_outputs.predict(x, verbose=0)
        w0, context = (outputs, None) if isinstance(outputs, np.ndarray) else outputs
        true_w0 = data["test_constants"]["w0"]
        param_error, param_rel_error = _errors({"w0": w0}, {"w0": true_w0})
        share = methods_lib.net_share(
            ode_layer, data["times"], y, constants={"w0": w0.astype("float32")}, context=context
        )
        return {
            "constants": {"w0_mean": float(np.mean(w0)), "w0_corr": float(np.corrcoef(w0, true_w0)[0, 1])},
            "true_constants": {"w0_mean": float(np.mean(true_w0))},
            "param_error": param_error,
            "param_rel_error": param_rel_error,
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

SYSTEMS = {
    "pendulum": PendulumTask,
    "pendulum_episodes": PendulumEpisodesTask,
    "forced_pendulum": ForcedPendulumTask,
    "duffing": DuffingTask,
    "reaction_diffusion": ReactionDiffusionTask,
}


def _mse(model, x, y, batch_size):
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.square(pred - y)))


def run_one(task, cfg, data, method, value, seed, epochs=None):
    """Trains one model and returns its result dict (and the model)."""
    training = methods_lib.training_for(method, value, encoder_layers=getattr(task, "encoder_layers", ()))
    keras.utils.set_random_seed(seed)
    model, ode_layer = task.build(cfg, training, seed, data["times"])
    optimizer = keras.optimizers.Adam(cfg["lr"], global_clipnorm=cfg.get("clipnorm"))
    model.compile(optimizer=optimizer, loss="mse", jit_compile=cfg.get("jit", True))
    x, y = data["train"]
    start = time.perf_counter()
    model.fit(x, y, batch_size=cfg["batch_size"], epochs=epochs or cfg["epochs"], verbose=0)
    seconds = time.perf_counter() - start
    result = {"method": method, "seed": int(seed)}
    hyper = methods_lib.METHODS[method][0]
    result["hyperparameter"] = {} if hyper is None else {hyper: value}
    result.update(task.evaluate(model, ode_layer, data))
    result["val_mse"] = _mse(model, *data["val"], cfg["batch_size"])
    result["test_mse"] = _mse(model, *data["test"], cfg["batch_size"])
    result["seconds"] = seconds
    return result, model


def run_experiment(system, methods, seeds, quick=False, epochs=None, sweep=None, tolerance=0.25, log=print,
                   on_progress=None, first_seed=0, value=None):
    """Runs the comparison; returns `(report dict, last trained model)`.

    Args:
        system: one of `SYSTEMS`.
        methods: list of method names (see `_experiment_methods.METHODS`).
        seeds: number of seeds (0, 1, ...).
        quick: small configuration (minutes). Defaults to `False`.
        epochs: overrides the configuration's number of epochs.
        sweep: sweep hyperparameters on seed 0 and select by validation
            MSE; `None` means: sweep unless `quick`. Defaults to `None`.
        tolerance: slack of the selection rule (`select`). Defaults to
            `0.25`.
        log: progress printer. Defaults to `print`.
        on_progress: optional function called with the partial report
            after every trained model. Defaults to `None`.
        first_seed: seeds are `first_seed, ..., first_seed + seeds - 1`
            (to extend an earlier run). Defaults to `0`.
        value: fixes the hyperparameter of every method (no sweep).
            Defaults to `None`.
    """
    if system not in SYSTEMS:
        raise ValueError(f"`system` must be one of {list(SYSTEMS)}. Received: system={system!r}")
    methods_lib.check_methods(methods)
    if seeds < 1:
        raise ValueError(f"`seeds` must be >= 1. Received: seeds={seeds}")
    task = SYSTEMS[system]()
    cfg = task.config(quick)
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    sweep = (not quick) if sweep is None else sweep
    datasets = {}

    def data_for(seed):
        if seed not in datasets:
            datasets[seed] = task.data(seed, cfg)
        return datasets[seed]

    value_fixed = value
    results, sweep_rows, selection, model = [], [], {}, None
    report = {
        "system": system,
        "quick": bool(quick),
        "config": cfg,
        "tolerance": tolerance,
        "selection": selection,
        "sweep": sweep_rows,
        "results": results,
    }

    def progress():
        if on_progress is not None:
            on_progress(report)

    for method in methods:
        hyper, default = methods_lib.METHODS[method]
        reuse = None
        if hyper is not None and value_fixed is not None:
            value = value_fixed
        elif hyper is not None and sweep and len(task.sweeps.get(method, [default])) == 1:
            value = task.sweeps.get(method, [default])[0]
        elif hyper is not None and sweep:
            rows = []
            for value in task.sweeps[method]:
                result, model = run_one(task, cfg, data_for(0), method, value, 0)
                log(f"  sweep {method} {hyper}={value:g}: val_mse={result['val_mse']:.3e} "
                    f"param_rel_error={result['param_rel_error']:.4f} ({result['seconds']:.0f} s)")
                rows.append({"method": method, "value": value, **{k: result[k] for k in (
                    "val_mse", "test_mse", "param_error", "param_rel_error", "net_share", "constants")}})
                rows[-1]["_result"] = result
                sweep_rows.append(rows[-1])
                progress()
            chosen = methods_lib.select(rows, tolerance)
            argmin = methods_lib.select(rows, 0.0)
            for row in rows:
                result = row.pop("_result")
                row["selected"] = row["value"] == chosen
                row["argmin"] = row["value"] == argmin
                if row["selected"]:
                    reuse = result
            value = chosen
        elif hyper is not None:
            value = getattr(task, "defaults", {}).get(method, default)
        else:
            value = None
        if hyper is not None:
            selection[method] = {hyper: value}
        for seed in range(first_seed, first_seed + seeds):
            if seed == 0 and reuse is not None:
                result = reuse
            else:
                result, model = run_one(task, cfg, data_for(seed), method, value, seed)
            log(f"  {method} seed={seed}: param_error={result['param_error']:.4g} "
                f"rel={result['param_rel_error']:.4f} test_mse={result['test_mse']:.3e} "
                f"net_share={result['net_share']:.3f} ({result['seconds']:.0f} s)")
            results.append(result)
            progress()
    return report, model


def _method_summaries(report):
    """`(method, hyperparameter dict, {metric: (mean, std)})` per method,
    in the order the methods ran."""
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    for method in methods:
        rows = [r for r in report["results"] if r["method"] == method]
        stats = {k: methods_lib.mean_std([r[k] for r in rows]) for k in (
            "param_error", "param_rel_error", "test_mse", "net_share", "seconds")}
        yield method, rows[0]["hyperparameter"], stats


def format_table(report):
    """Mean ± std over seeds, one row per method."""
    lines = [
        f"{'method':<11} {'hyper':<13} {'param_error':>21} {'rel_error':>17} "
        f"{'test_mse':>21} {'net_share':>15} {'time[s]':>8}"
    ]
    for method, hyperparameter, stats in _method_summaries(report):
        hyper = ",".join(f"{k}={v:g}" for k, v in hyperparameter.items()) or "-"
        lines.append(
            f"{method:<11} {hyper:<13} "
            f"{stats['param_error'][0]:>10.3e}±{stats['param_error'][1]:<10.2e} "
            f"{stats['param_rel_error'][0]:>8.4f}±{stats['param_rel_error'][1]:<8.4f} "
            f"{stats['test_mse'][0]:>10.3e}±{stats['test_mse'][1]:<10.2e} "
            f"{stats['net_share'][0]:>7.3f}±{stats['net_share'][1]:<7.3f} "
            f"{stats['seconds'][0]:>8.1f}"
        )
    return "\n".join(lines)


def format_sweep(report):
    lines = [f"{'method':<11} {'value':>8} {'val_mse':>10} {'test_mse':>10} {'param_err':>10} "
             f"{'rel_err':>8} {'net_share':>9}  chosen"]
    for row in report["sweep"]:
        mark = ("tolerance" if row["selected"] else "") + (" argmin" if row["argmin"] else "")
        lines.append(
            f"{row['method']:<11} {row['value']:>8g} {row['val_mse']:>10.3e} {row['test_mse']:>10.3e} "
            f"{row['param_error']:>10.3e} {row['param_rel_error']:>8.4f} {row['net_share']:>9.3f}  {mark.strip()}"
        )
    return "\n".join(lines)


def markdown_tables(report):
    """Markdown tables (sweep and mean ± std per method) of a report."""
    out = []
    if report.get("sweep"):
        out.append("| method | value | val MSE | test MSE | param. error | rel. error | net share | chosen |")
        out.append("|---|---|---|---|---|---|---|---|")
        for row in report["sweep"]:
            mark = ", ".join(m for m, flag in (("rule", row.get("selected")), ("argmin", row.get("argmin"))) if flag)
            out.append(
                f"| {row['method']} | {row['value']:g} | {row['val_mse']:.3e} | {row['test_mse']:.3e} | "
                f"{row['param_error']:.3e} | {row['param_rel_error']:.4f} | {row['net_share']:.3f} | {mark} |"
            )
        out.append("")
    out.append("| method | hyperparameter | param. error | rel. error | test MSE | net share | s/run |")
    out.append("|---|---|---|---|---|---|---|")
    for method, hyperparameter, s in _method_summaries(report):
        hyper = ", ".join(f"{k}={v:g}" for k, v in hyperparameter.items()) or "-"
        out.append(
            f"| {method} | {hyper} | {s['param_error'][0]:.3e} ± {s['param_error'][1]:.1e} | "
            f"{s['param_rel_error'][0]:.4f} ± {s['param_rel_error'][1]:.4f} | "
            f"{s['test_mse'][0]:.3e} ± {s['test_mse'][1]:.1e} | "
            f"{s['net_share'][0]:.3f} ± {s['net_share'][1]:.3f} | {s['seconds'][0]:.0f} |"
        )
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_hybrid.experiments",
        description="Plain training vs regularizers vs SAM variants on hybrid models.",
    )
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--methods", default=",".join(methods_lib.DEFAULT_METHODS),
                        help="comma-separated subset of " + ",".join(methods_lib.METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small configuration (minutes), no sweep")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--sweep", dest="sweep", action="store_true", default=None,
                        help="sweep hyperparameters (default unless --quick)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false")
    parser.add_argument("--tolerance", type=float, default=0.25,
                        help="selection slack on the validation MSE (0: argmin)")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (to extend a run)")
    parser.add_argument("--value", type=float, default=None,
                        help="fix the hyperparameter (rho or lambda) of the methods; no sweep")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: default)")
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--export", default=None, help="SavedModel directory for the last model")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        methods_lib.check_methods(methods)
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    directory = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(directory, exist_ok=True)

    def write(report, complete):
        report = {k: v for k, v in report.items()}
        report["sweep"] = [{k: v for k, v in r.items() if k != "_result"} for r in report["sweep"]]
        report["complete"] = complete
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)

    start = time.perf_counter()
    print(f"{args.system}: methods={','.join(methods)} seeds={args.seeds} quick={args.quick}", flush=True)
    report, model = run_experiment(
        args.system, methods, args.seeds, quick=args.quick, epochs=args.epochs,
        sweep=args.sweep, tolerance=args.tolerance, log=lambda s: print(s, flush=True),
        on_progress=lambda report: write(report, False), first_seed=args.first_seed, value=args.value,
    )
    report["wall_seconds"] = time.perf_counter() - start
    report["command"] = "python -m keras_hybrid.experiments " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if report["sweep"]:
        print("\nHyperparameter sweep (seed 0; selection uses val_mse only)")
        print(format_sweep(report))
    print(f"\n{args.system}: mean ± std over {args.seeds} seed(s), test set")
    print(format_table(report))
    print(f"wall time {report['wall_seconds']:.0f} s")
    write(report, True)
    if args.export:
        from keras_hybrid.export import export_saved_model

        export_saved_model(model, args.export, overwrite=True)
        print(f"exported the last model to {args.export}")


if __name__ == "__main__":
    main()

