"""Training methods compared by `keras_hybrid.experiments`, and the
metrics they are scored with (private helpers)."""

import collections

import keras
import numpy as np
from keras import ops

from keras_hybrid.sam import SAM

# name -> (hyperparameter name, default value). `None`: no hyperparameter.
METHODS = {
    "erm": (None, None),
    "l2": ("lambda", 1e-4),
    "minnorm": ("lambda", 0.1),
    "sam": ("rho", 0.05),
    "sam-neural": ("rho", 0.3),
    "asam": ("rho", 0.5),
    "sam-correction": ("rho", 0.3),
    "asam-neural": ("rho", 0.5),
    "sam-relative": ("rho", 0.03),
    "sam-auto": ("rho", None),
    "physics": (None, None),
}

# Run when `--methods` is not given (`sam-correction` differs from
# `sam-neural` only on systems with an encoder).
DEFAULT_METHODS = ("erm", "l2", "minnorm", "sam", "sam-neural", "asam")

Training = collections.namedtuple(
    "Training", ["sam", "kernel_regularizer", "penalty", "physics_only"], defaults=(False,)
)


def check_methods(names):
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"`--methods` must be a comma-separated subset of {list(METHODS)}. "
            f"Received: {','.join(names)!r}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        # A method run twice would be averaged as if over more seeds.
        raise ValueError(f"`--methods` must name each method once. Received: {','.join(names)!r}, "
                         f"with {repeated} repeated")
    return names


def training_for(method, value, encoder_layers=()):
    """The `Training` settings of `method` with hyperparameter `value`.

    `asam-neural` is adaptive SAM on the network weights only, with the
    reference ASAM's scaling of kernels alone (biases unscaled);
    `sam-relative` is neural-only SAM whose radius is `rho` times the
    norm of the network's weights; `sam-auto` is neural-only SAM with the
    radius chosen by `keras_hybrid.radius_path`; `physics` fits the
    physics part alone (no network).

    `encoder_layers` (layer names) are left unperturbed by `sam-correction`,
    which is `sam-neural` without the encoder that infers per-episode
    constants; without an encoder the two are the same.
    """
    if method == "erm":
        return Training(None, None, 0.0)
    if method == "l2":
        return Training(None, keras.regularizers.L2(value), 0.0)
    if method == "minnorm":
        return Training(None, None, float(value))
    if method == "sam":
        return Training(SAM(rho=value, perturb="all"), None, 0.0)
    if method == "sam-neural":
        return Training(SAM(rho=value, perturb="neural"), None, 0.0)
    if method == "sam-correction":
        return Training(SAM(rho=value, perturb="neural", exclude=tuple(encoder_layers)), None, 0.0)
    if method == "asam":
        return Training(SAM(rho=value, perturb="all", adaptive=True), None, 0.0)
    if method == "asam-neural":
        return Training(SAM(rho=value, perturb="neural", adaptive=True, adaptive_scope="kernels"), None, 0.0)
    if method == "sam-relative":
        return Training(SAM(rho=value, perturb="neural", relative=True), None, 0.0)
    if method == "sam-auto":
        # The radius is chosen by `radius_path`; `value` is its choice.
        return Training(None if not value else SAM(rho=value, perturb="neural"), None, 0.0)
    if method == "physics":
        return Training(None, None, 0.0, physics_only=True)
    raise ValueError(f"Unknown method {method!r}. Valid: {list(METHODS)}")


class OutputPenalty(keras.layers.Layer):
    """Called on `[output, correction]`: adds `weight * mean ||correction||^2`
    over the batch to the loss (minimum-norm penalty of an additive
    correction) and returns `output` unchanged."""

    def __init__(self, weight, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, inputs):
        output, correction = inputs
        self.add_loss(self.weight * ops.mean(ops.sum(ops.square(correction), axis=-1)))
        return output

    def get_config(self):
        config = super().get_config()
        config["weight"] = self.weight
        return config


class CorrectionPenalty(keras.layers.Layer):
    """Adds `weight * mean ||f_net(y)||^2` over a trajectory to the loss
    (APHYNITY-style minimum-norm penalty on the network's output) and
    returns the trajectory unchanged.

    The correction of `ode_layer` is evaluated at every predicted state
    (treated as data: no gradient flows into the states), at its time, with
    the episode's context if any.
    """

    def __init__(self, ode_layer, weight, **kwargs):
        super().__init__(**kwargs)
        # Not tracked as a sublayer: its variables belong to the ODE layer.
        object.__setattr__(self, "_ode_layer", ode_layer)
        self.weight = float(weight)

    def call(self, trajectory, context=None):
        ode_layer = self._ode_layer
        times = np.asarray(ode_layer.times, "float32")
        n_times, n = len(times), trajectory.shape[-1]
        states = ops.reshape(ops.stop_gradient(trajectory), (-1, n))
        batch = ops.shape(trajectory)[0]
        t = ops.reshape(ops.tile(ops.convert_to_tensor(times)[None, :], (batch, 1)), (-1, 1))
        if context is not None:
            context = ops.reshape(
                ops.repeat(context[:, None, :], n_times, axis=1), (-1, context.shape[-1])
            )
        correction = ode_layer.correction_term(t, states, context=context, training=True)
        self.add_loss(self.weight * ops.mean(ops.sum(ops.square(correction), axis=-1)))
        return trajectory

    def get_config(self):
        config = super().get_config()
        config["weight"] = self.weight
        return config


def net_share(ode_layer, times, observations, constants=None, context=None):
    """`||f_net|| / ||f_phys + f_net||` over all observed states.

    Args:
        ode_layer: the model's `ODELayer`.
        times: `(T,)` observation times.
        observations: `(n, T, d)` observed states.
        constants: optional per-episode constants, dict of `(n,)` arrays.
        context: optional per-episode context `(n, c)`.
    """
    net_sq, total_sq = 0.0, 0.0
    for k, t in enumerate(np.asarray(times, "float32")):
        y = ops.convert_to_tensor(observations[:, k])
        c = None if constants is None else {key: ops.convert_to_tensor(v) for key, v in constants.items()}
        t_col = ops.full((observations.shape[0], 1), float(t))
        physics, correction = ode_layer.vector_field_parts(
            t_col if ode_layer.correction_inputs == "state_and_time" else float(t),
            y,
            constants=c,
            context=None if context is None else ops.convert_to_tensor(context),
        )
        physics = ops.convert_to_numpy(physics)
        correction = 0.0 if correction is None else ops.convert_to_numpy(correction)
        net_sq += float(np.sum(np.square(correction)))
        total_sq += float(np.sum(np.square(physics + correction)))
    return float(np.sqrt(net_sq / max(total_sq, 1e-30)))


def select(sweep_rows, tolerance):
    """Hyperparameter chosen from validation errors only.

    The rule prefers the strongest regularization (largest value) whose
    validation MSE is within `(1 + tolerance)` of the best validation MSE
    of the sweep (a "one standard error"-style rule); `tolerance=0` is
    plain argmin.

    Args:
        sweep_rows: list of dicts with `"value"` and `"val_mse"`.
        tolerance: relative slack, >= 0.

    Returns:
        The chosen value.
    """
    finite = [r for r in sweep_rows if np.isfinite(r["val_mse"])]
    if not finite:
        return sweep_rows[0]["value"]
    best = min(r["val_mse"] for r in finite)
    eligible = [r["value"] for r in finite if r["val_mse"] <= (1.0 + tolerance) * best]
    return max(eligible)


def mean_std(values):
    values = np.asarray(values, dtype="float64")
    return float(np.mean(values)), float(np.std(values))
