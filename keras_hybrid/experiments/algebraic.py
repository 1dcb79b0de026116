"""Small-data algebraic tasks: `y = law(x; constants) + net(x)`.

The laws, ranges, noise and true constants are in
`keras_hybrid.systems.algebraic`. The correction network reads the raw
independent variable (millimolar, kelvin or minutes), so the three tasks
put very different input scales in front of the same network; with
`standardize=True` in the configuration (`--standardize` on the command
line) a `keras.layers.Normalization` adapted to the training inputs is the
correction's first layer (it is saved with the model).
"""

import keras
import numpy as np

from keras_hybrid.constants import PhysicalConstant
from keras_hybrid.experiments import methods as methods_lib
from keras_hybrid.experiments.tasks import TEST_SEED, VAL_SEED_OFFSET, GlobalConstantTask, _errors
from keras_hybrid.layers import ScientificLayer
from keras_hybrid.models import HybridModel
from keras_hybrid.systems import algebraic

N_TEST = 200


def correction_network(hidden, seed, regularizer, standardize_from=None, name="correction"):
    """2-layer tanh MLP of the raw scalar input, optionally standardized.

    Args:
        hidden: width of the hidden layers.
        seed: seed of the Glorot initializers.
        regularizer: kernel regularizer or `None`.
        standardize_from: training inputs `(n, 1)` to adapt a
            `keras.layers.Normalization` first layer to, or `None` for the
            raw input. Defaults to `None`.
        name: model name. Defaults to `"correction"`.
    """
    init = keras.initializers.GlorotUniform
    layers = [keras.Input((1,))]
    if standardize_from is not None:
        norm = keras.layers.Normalization(axis=-1, name="standardize")
        norm.adapt(np.asarray(standardize_from, "float32"))
        layers.append(norm)
    layers += [
        keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed), kernel_regularizer=regularizer),
        keras.layers.Dense(hidden, "tanh", kernel_initializer=init(seed + 1), kernel_regularizer=regularizer),
        keras.layers.Dense(1, kernel_initializer=init(seed + 2), kernel_regularizer=regularizer),
    ]
    return keras.Sequential(layers, name=name)


class AlgebraicTask(GlobalConstantTask):
    """One law of `keras_hybrid.systems.algebraic` plus a correction network."""

    fits_physics_alone = True

    sweeps = {
        "l2": [1e-4, 1e-3, 1e-2],
        "minnorm": [0.01, 0.1, 1.0],
        "sam": [0.01, 0.05, 0.3],
        "sam-neural": [0.03, 0.1, 0.3, 1.0],
        "asam": [0.1, 0.5, 1.0],
        "asam-neural": [0.1, 0.5, 1.0, 2.0],
        "sam-relative": [0.01, 0.03, 0.1, 0.3],
    }
    defaults = {"l2": 1e-3, "minnorm": 0.1, "sam": 0.05, "sam-neural": 0.3, "asam": 0.5,
                "asam-neural": 0.5, "sam-relative": 0.03}

    @property
    def spec(self):
        return algebraic.TASKS[self.name]

    @property
    def true_constants(self):
        return dict(self.spec["true"])

    def config(self, quick):
        n = self.spec["n"]
        # Full-batch Adam steps; `repeat` packs 100 of them into one epoch.
        # No XLA: on a dozen points the graph runs faster without it.
        epochs = 400 if quick else 1000
        return dict(n_train=n, n_val=n, n_test=N_TEST, epochs=epochs, repeat=100, batch_size=n, lr=1e-2,
                    hidden=32, standardize=False, jit=False, steps_per_execution=100)

    def data(self, seed, cfg):
        x, y = algebraic.simulate(self.name, seed=seed)
        xv = algebraic.uniform_inputs(self.name, cfg["n_val"], seed + VAL_SEED_OFFSET)
        _, yv = algebraic.simulate(self.name, x=xv, seed=seed + 2 * VAL_SEED_OFFSET)
        xt = algebraic.design(self.name, cfg["n_test"])
        _, yt = algebraic.simulate(self.name, x=xt, seed=TEST_SEED, noise=0.0)
        return {"times": None, "train": (x, y), "val": (xv, yv), "test": (xt, yt)}

    def build_from_data(self, cfg, training, seed, data):
        """`(model, parts)`: the hybrid model and a model giving
        `(physics, correction)` outputs (for the net share)."""
        x_train = data["train"][0]
        x = keras.Input((1,), name="x")
        constants = [
            PhysicalConstant(name, value, unit=unit, constraint="positive")
            for name, (value, unit) in self.spec["initial"].items()
        ]
        physics = ScientificLayer(self.spec["law"], constants, name=self.name)(x)
        if training.physics_only:
            return HybridModel(x, physics, name=f"{self.name}_physics"), keras.Model(x, physics, name="parts")
        correction = correction_network(
            cfg["hidden"], seed, training.kernel_regularizer,
            standardize_from=x_train if cfg.get("standardize") else None,
        )(x)
        output = keras.layers.Add(name="hybrid_output")([physics, correction])
        if training.penalty:
            output = methods_lib.OutputPenalty(training.penalty, name="minnorm")([output, correction])
        model = HybridModel(x, output, sam=training.sam, name=f"{self.name}_hybrid")
        parts = keras.Model(x, [physics, correction], name="parts")
        return model, parts

    def evaluate(self, model, parts, data):
        estimates = self.physical_values(model)
        param_error, param_rel_error, param_mse = _errors(estimates, self.true_constants)
        outputs = parts.predict(data["test"][0], verbose=0)
        physics, correction = (outputs, 0.0 * outputs) if isinstance(outputs, np.ndarray) else outputs
        share = float(np.sqrt(np.sum(correction**2) / max(np.sum((physics + correction) ** 2), 1e-30)))
        return {
            "constants": {k: float(v) for k, v in estimates.items()},
            "true_constants": self.true_constants,
            "param_error": param_error,
            "param_rel_error": param_rel_error,
            "param_mse": param_mse,
            "net_share": share,
        }


class MichaelisMentenTask(AlgebraicTask):
    """Michaelis-Menten, 12 points, substrate 0.02-1.1 mM."""

    name = "michaelis_menten"


class ArrheniusTask(AlgebraicTask):
    """Arrhenius plot, 20 points, 270-630 K."""

    name = "arrhenius"


class FirstOrderKineticsTask(AlgebraicTask):
    """First-order decay, 15 points, 0-250 min."""

    name = "first_order_kinetics"


ALGEBRAIC_SYSTEMS = {
    "michaelis_menten": MichaelisMentenTask,
    "arrhenius": ArrheniusTask,
    "first_order_kinetics": FirstOrderKineticsTask,
}
