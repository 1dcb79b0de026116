"""Keras models trained with a sharpness-aware (SAM) `train_step`."""

import contextlib
import inspect
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_hybrid._array_input import array_ranks, one_iterator_fit_arguments
from keras_hybrid._shape_checks import check_loss_shapes
from keras_hybrid.callbacks import NonFiniteGuard, check_non_finite_policy
from keras_hybrid.layers import (
    _constant_spec,
    _enclosing_layer_names,
    constant_units,
    is_physical_variable,
    physical_constants,
)
from keras_hybrid.looksam import LookSAMState
from keras_hybrid.ode import is_seed_state
from keras_hybrid.non_finite import StepRecord, guarded_apply, non_finite_report
from keras_hybrid.sam import EXCLUDED, NEURAL, PHYSICAL, SAM, all_finite

def _as_sam(sam):
    if sam is None or isinstance(sam, SAM):
        return sam
    if isinstance(sam, dict):
        value = keras.saving.deserialize_keras_object(sam) if "class_name" in sam else SAM(**sam)
        if not isinstance(value, SAM):
            raise TypeError(
                "`sam` must be a `keras_hybrid.SAM` or its config; this config deserializes to "
                f"a `{type(value).__name__}`. Received: sam={sam!r}"
            )
        return value
    raise TypeError(f"`sam` must be a `keras_hybrid.SAM`, a dict or None. Received: sam={sam!r}")


def _unscale_loss_for_distribution(loss):
    # Keras divides the loss by the number of replicas; the reported loss is
    # the per-example mean over the global batch.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * ops.cast(replicas, loss.dtype) if replicas > 1 else loss


def _batch_size(x):
    first = next(t for t in tf.nest.flatten(x) if t is not None)
    return ops.shape(first)[0]


def _rescale(gradients, factor, divide):
    """Gradients divided (or multiplied) by the loss scale `factor`;
    unchanged when there is no loss scaling (`factor=None`)."""
    if factor is None:
        return list(gradients)
    op = ops.divide if divide else ops.multiply
    return [None if g is None else op(g, ops.cast(factor, g.dtype)) for g in gradients]


def _multi_replica_context():
    """The replica context of a strategy with several replicas, or `None`."""
    context = tf.distribute.get_replica_context()
    if not tf.distribute.has_strategy() or context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _on_every_replica(flag):
    """A scalar bool that holds on every replica of a strategy (itself
    without one): a SAM step falls back on all replicas or on none, so
    that it is single-device SAM's step on the global batch, or the plain
    one, never a mix of the two."""
    context = _multi_replica_context()
    if context is None:
        return flag
    # The count of replicas where it fails (ReduceOp has no MIN).
    failing = context.all_reduce(tf.distribute.ReduceOp.SUM, ops.cast(ops.logical_not(flag), "float32"))
    return ops.equal(failing, 0.0)


def _select(condition, if_true, if_false):
    """`if_true` where `condition` holds, else `if_false` (lists with the
    same `None` entries)."""
    present = [i for i, (a, b) in enumerate(zip(if_true, if_false)) if a is not None and b is not None]
    if not present:
        return list(if_false)
    chosen = ops.cond(
        condition, lambda: [if_true[i] for i in present], lambda: [if_false[i] for i in present]
    )
    out = list(if_false)
    for i, g in zip(present, chosen):
        out[i] = g
    return out


def _strategy_replicas(model):
    # `distribute_strategy`: the strategy the model was created under, or
    # the current (possibly default, one-device) strategy.
    strategy = model.distribute_strategy
    return strategy.num_replicas_in_sync, strategy


class SAMTrainStep:
    """Mixin giving a `keras.Model` the sharpness-aware `train_step`.

    Each step takes two forward-backward passes:

    1. `g = grad L(w)` at the current weights (this pass updates
       BatchNorm-like state and the reported loss and metrics, exactly as a
       plain step does);
    2. `g' = grad L(w + e)` with `e` from `self.sam` (see `SAM`). The
       perturbed pass runs inside a `keras.StatelessScope`: variables are
       never modified, so "restoring" them is exact by construction, and
       state updates of that pass are discarded, except the random-number
       generators' (dropout, noise), which advance so that the pass draws
       its own masks. That holds for the model's own generators (a
       layer's `keras.random.SeedGenerator`, as Keras's Dropout and noise
       layers have); a layer of yours that draws without a seed uses
       Keras's global generator, whose advance in the perturbed pass is
       discarded: the next step's first pass draws those numbers again.
       Give such a layer a `SeedGenerator` of its own.

    `g'` is applied with the compiled optimizer. With `sam=None` or a zero
    radius, the step *is* Keras's plain step. Non-finite steps are skipped:
    if the loss, or the gradient applied, is NaN/Inf, or if the update
    would make a weight or an optimizer variable NaN/Inf, the weights, the
    optimizer state and `optimizer.iterations` keep their values (see
    `keras_hybrid.non_finite`). If only the perturbed pass is non-finite
    (e.g. `w + e` leaves an equation's domain), the step falls back to the
    plain gradient `g` (with loss scaling too: a `LossScaleOptimizer`
    would take a NaN gradient for an overflow and skip every step).
    Skipped steps and fallbacks are counted per epoch in the logs
    (`skipped_steps`, `sam_fallbacks`; with loss scaling also
    `loss_scale_skips`, the steps the scaler skipped itself) and reported
    according to `on_non_finite`.

    Mix it into your own subclassed model, before `keras.Model`, and set
    `self.sam`:

    ```python
    class MyModel(SAMTrainStep, keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.sam = SAM(rho=0.05)
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)
    ```
    """

    @property
    def sam(self):
        """The `SAM` settings of the training step (`None`: plain steps).

        `SAM` objects are read-only; assign new settings to change them
        (`model.sam = SAM(rho=0.1)`): they are validated, and the next step
        is traced anew, also when a callback assigns them during `fit`
        (e.g. a radius schedule at `on_epoch_begin`).
        """
        return getattr(self, "_sam", None)

    @sam.setter
    def sam(self, value):
        value = _as_sam(value)
        changed = value != getattr(self, "_sam", None)
        self._sam = value
        if changed:
            # LookSAM's stored direction belongs to the former settings.
            object.__setattr__(self, "_looksam", None)
        if changed and getattr(self, "train_function", None) is not None:
            # A callback may change the settings during `fit`, which calls
            # the model's train function again at every step: make the new
            # one now (traced at its first call; it builds LookSAM's state).
            self.make_train_function(force=True)

    @property
    def on_non_finite(self):
        """What `fit` does with NaN/Inf: `"warn"`, `"raise"` or `"skip"`.

        In every mode a non-finite step is skipped (see `SAMTrainStep`), so
        the weights and the optimizer state keep their last finite values,
        and the logs count skipped steps (`skipped_steps`) and SAM
        fallbacks (`sam_fallbacks`) per epoch. `"warn"` (the default) also
        warns once when arrays passed to `fit` (`x`, `y`, `sample_weight`,
        `validation_data`) contain NaN/Inf, naming the array and the first
        bad index, and once per kind of event during training (a skipped
        step, a SAM fallback, a non-finite validation loss), naming the
        current physical constants; `"raise"` raises a `ValueError` for such
        arrays before training and a `FloatingPointError` at the end of the
        epoch of the first event (training stops at the first non-finite
        loss); `"skip"` only skips. See `NonFiniteGuard`.
        """
        return getattr(self, "_on_non_finite", "warn")

    @on_non_finite.setter
    def on_non_finite(self, value):
        self._on_non_finite = check_non_finite_policy(value)

    # -- physical constants -------------------------------------------------

    def physical_constants(self):
        """Physical constants of all `ScientificLayer`s, `name -> float`.

        A name shared by several layers is qualified by the variable path
        (`"layer_name/w0"`).
        """
        return physical_constants(self)

    def constant_units(self):
        """Units of the physical constants, `name -> unit string`."""
        return constant_units(self)

    # -- training -----------------------------------------------------------

    def _loss_metric(self):
        for metric in self.metrics:
            if metric.name == "loss":
                return metric
        return None

    def _forward_loss(self, x, y, sample_weight):
        y_pred = self(x, training=True)
        check_loss_shapes(self, y, y_pred)
        # An override of `compute_loss` without `training` (the older
        # signature) is called as Keras calls it.
        if "training" in inspect.signature(self.compute_loss).parameters:
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
        else:
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        return y_pred, loss

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with the non-finite policy `on_non_finite`.

        Arrays given as `x`, `y`, `sample_weight` or `validation_data` are
        scanned for NaN/Inf before training; a `NonFiniteGuard` is added to
        the callbacks (unless one is there) to count and report non-finite
        steps.

        Arrays (NumPy or tensors) are fed through one data iterator for the
        whole `fit`, where `keras.Model.fit` starts a new one at every
        epoch: the same batches in the same order, and much faster epochs
        on small data sets (4.8 against 36.9 ms an epoch on 12 points,
        `benchmarks/epoch_overhead.py`). Note that with a global seed set
        (`keras.utils.set_random_seed`), Keras's `shuffle=True` visits the
        samples in the same order at every epoch, and so does this `fit`,
        to give the weights Keras's own array input gives; feed
        `kh.repeated_dataset` for a new order at every epoch.

        Everything else is `keras.Model.fit`.
        """
        policy = self.on_non_finite
        fit = super().fit
        try:
            bound = inspect.signature(fit).bind(x, y, *args, **kwargs)
        except TypeError:
            return fit(x, y, *args, **kwargs)  # Keras's own error for the arguments
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        weights = arguments["sample_weight"]
        if isinstance(weights, (list, tuple)) and weights and all(np.ndim(w) == 0 for w in weights):
            # One weight per sample as a plain list: Keras expects an array
            # (and fails with an IndexError). A list of arrays stays a list
            # (one per output).
            arguments["sample_weight"] = np.asarray(weights, "float32")
        if policy != "skip":
            self._check_fit_arrays(policy, arguments)
        self._forget_steps_traced_for_other_ranks(arguments)
        arguments = one_iterator_fit_arguments(
            arguments, getattr(self, "steps_per_execution", 1)) or arguments
        callbacks = arguments["callbacks"]
        # A ready-made CallbackList is left as it is.
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = list(callbacks or [])
            if not any(isinstance(c, NonFiniteGuard) for c in callbacks):
                callbacks.append(NonFiniteGuard(mode=policy))
            arguments["callbacks"] = callbacks
        return fit(**arguments)

    def _forget_steps_traced_for_other_ranks(self, arguments):
        # Keras would retrace a step for arrays of another rank with the
        # ranks relaxed to unknown, which its own loss cannot handle: the
        # step is built afresh instead.
        for names, function in ((("x", "y", "sample_weight"), "train_function"),
                                (("validation_data",), "test_function")):
            ranks = array_ranks(arguments, names)
            if ranks is None:
                continue
            seen = getattr(self, "_fit_array_ranks", {})
            if seen.get(function, ranks) != ranks:
                setattr(self, function, None)
            object.__setattr__(self, "_fit_array_ranks", {**seen, function: ranks})

    def _check_fit_arrays(self, policy, arguments):
        for name, data, consequence in (
            ("x", arguments["x"], "Steps on batches with these samples are skipped."),
            ("y", arguments["y"], "Steps on batches with these samples are skipped."),
            ("sample_weight", arguments["sample_weight"],
             "Steps on batches with these samples are skipped."),
            ("validation_data", arguments["validation_data"],
             "The validation loss will not be finite."),
        ):
            report = non_finite_report(name, data)
            if report is None:
                continue
            if policy == "raise":
                raise ValueError(
                    f"{report} Clean the data, or set `on_non_finite='warn'` to go on "
                    "regardless."
                )
            warnings.warn(f"{report} {consequence}", stacklevel=3)

    @contextlib.contextmanager
    def _without_jit_under_strategy(self):
        # keras-team/keras#19005: Keras cannot XLA-compile a step under a
        # tf.distribute strategy. Trace without XLA, and leave the user's
        # `jit_compile` setting as it was.
        replicas, strategy = _strategy_replicas(self)
        distributed = tf.distribute.has_strategy() or (
            strategy is not tf.distribute.get_strategy()
        )
        if not (self.jit_compile and (replicas > 1 or distributed)):
            yield
            return
        warnings.warn(
            "`jit_compile=True` is not supported by Keras under a tf.distribute "
            f"strategy ({type(strategy).__name__}, {replicas} replica(s)); training "
            "without XLA (keras-team/keras#19005). Compile with "
            "`jit_compile=False` to silence this warning.",
            stacklevel=3,
        )
        saved = self.jit_compile
        self.jit_compile = False
        try:
            yield
        finally:
            self.jit_compile = saved

    def make_train_function(self, force=False):
        replicas, strategy = _strategy_replicas(self)
        sam = self.sam
        if sam is not None and sam.every > 1 and not sam.is_plain and replicas > 1:
            raise ValueError(
                f"`SAM(every={sam.every})` (LookSAM) is not supported under a tf.distribute "
                f"strategy with more than one replica ({type(strategy).__name__}, {replicas} "
                "replicas): its stored direction is per-model state that the replicas would "
                "have to share. Use `every=1` for distributed training. "
                f"Received: sam={sam!r}"
            )
        if sam is not None and sam.exclude:
            sam.check_exclude(self.trainable_variables, _enclosing_layer_names(self, include_owner=True))
        self._build_step_state(strategy)
        # A step traced for other trainable variables (a constant frozen or
        # freed since, `set_constant_trainable`) would go on updating the
        # old ones: trace it again.
        trainable = [id(v) for v in self.trainable_variables]
        if getattr(self, "_traced_trainable", trainable) != trainable:
            self.train_function = None
        object.__setattr__(self, "_traced_trainable", trainable)
        if self.train_function is not None and not force:
            return self.train_function
        with self._without_jit_under_strategy():
            return super().make_train_function(force=force)

    def _build_step_state(self, strategy):
        # Per-step records and LookSAM's direction: state outside Keras's
        # tracking (not weights, not saved, not exported).
        if getattr(self, "_step_record", None) is None:
            with strategy.scope():
                object.__setattr__(self, "_step_record", StepRecord())
        sam = self.sam
        if sam is None or sam.every == 1 or sam.is_plain:
            object.__setattr__(self, "_looksam", None)
            return
        current = getattr(self, "_looksam", None)
        if current is None or not current.matches(self.trainable_variables):
            object.__setattr__(self, "_looksam", LookSAMState(self.trainable_variables))

    def load_weights(self, *args, **kwargs):
        """`keras.Model.load_weights`; LookSAM's stored direction is then
        forgotten (it belongs to the weights before), so the next step is
        a full SAM step, as after a restart (`BackupAndRestore` loads its
        backup this way)."""
        result = super().load_weights(*args, **kwargs)
        self._forget_looksam_direction()
        return result

    def set_weights(self, weights):
        """`keras.Model.set_weights`; forgets LookSAM's stored direction, as
        `load_weights` does."""
        super().set_weights(weights)
        self._forget_looksam_direction()

    def _forget_looksam_direction(self):
        looksam = getattr(self, "_looksam", None)
        if looksam is not None:
            looksam.invalidate()

    def _record(self, applied, loss, fallback=None, scaler_skip=None):
        record = getattr(self, "_step_record", None)
        if record is None:  # `train_step` called directly
            return
        context = _multi_replica_context()
        if context is not None:
            # The global loss (Keras divided each replica's by their number),
            # so that a NaN on any replica is recorded as such.
            loss = context.all_reduce(tf.distribute.ReduceOp.SUM, loss)
        record.update(applied, loss, fallback, scaler_skip)

    def _plain_train_step(self, data):
        # Keras's own TensorFlow train step, with the non-finite guard (same
        # ops, so finite steps are bit-identical).
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = list(self.trainable_variables)
        with tf.GradientTape() as tape:
            y_pred, loss = self._forward_loss(x, y, sample_weight)
            tracker = self._loss_metric()
            if tracker is not None:
                tracker.update_state(
                    _unscale_loss_for_distribution(loss), sample_weight=_batch_size(x)
                )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        applied, scaler_skip = guarded_apply(self.optimizer, gradients, variables, [loss])
        self._record(applied, loss, scaler_skip=scaler_skip)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def train_step(self, data):
        sam = getattr(self, "sam", None)
        if not self.trainable_variables:
            return super().train_step(data)
        variables = list(self.trainable_variables)
        # Nothing to perturb (e.g. `perturb="neural"` on a physics-only
        # model): the second pass would repeat the first at twice the cost.
        if sam is None or sam.is_plain or not sam.perturbs_any(self._sam_groups(variables)):
            return self._plain_train_step(data)

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        seed_states = [v for v in self.non_trainable_variables if is_seed_state(v)]
        seeds_before = [tf.identity(v.value) for v in seed_states]

        # Pass 1, at w: the step's loss, metrics and state updates.
        with tf.GradientTape() as tape:
            y_pred, loss = self._forward_loss(x, y, sample_weight)
            scaled_loss = self.optimizer.scale_loss(loss)
        tracker = self._loss_metric()
        if tracker is not None:
            tracker.update_state(_unscale_loss_for_distribution(loss), sample_weight=_batch_size(x))
        # The perturbation needs the true gradient; with mixed precision the
        # tape saw the scaled loss. Without loss scaling nothing is rescaled.
        loss_scale = None
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            loss_scale = self.optimizer.scale_loss(ops.convert_to_tensor(1.0, "float32"))
        local_gradients = _rescale(tape.gradient(scaled_loss, variables), loss_scale, divide=True)
        gradients = self._maybe_synchronize(local_gradients, sam)

        def full_sam_step():
            perturbed, fallback = self._perturbed_gradients(
                x, y, sample_weight, variables, gradients, loss_scale, seed_states, seeds_before
            )
            # Fallback: this replica's own plain gradient (the optimizer
            # all-reduces what is applied).
            return _select(fallback, local_gradients, perturbed), fallback

        if sam.every == 1:
            final, fallback = full_sam_step()
        else:
            final, fallback = self._looksam.gradients(
                sam, self.optimizer.iterations, gradients, full_sam_step
            )
        # A LossScaleOptimizer expects gradients of the scaled loss.
        applied, scaler_skip = guarded_apply(
            self.optimizer, _rescale(final, loss_scale, divide=False), variables, [loss]
        )
        # A step skipped for its own loss is not counted as a fallback too.
        self._record(applied, loss, ops.logical_and(fallback, ops.all(ops.isfinite(loss))),
                     scaler_skip=scaler_skip)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _sam_groups(self, variables):
        """SAM's group of each variable: excluded, physical or neural."""
        # `exclude` matches the layers holding a variable besides its path.
        holders = _enclosing_layer_names(self, include_owner=True) if self.sam.exclude else {}
        return [
            EXCLUDED if self.sam.is_excluded(v.path, holders.get(id(v), ()))
            else PHYSICAL if is_physical_variable(v) else NEURAL
            for v in variables
        ]

    def _perturbed_gradients(self, x, y, sample_weight, variables, gradients, loss_scale,
                             seed_states, seeds_before):
        """Gradient of the loss at `w + e` (pass 2), unscaled, and a scalar
        bool: the pass was not finite (the caller then falls back).
        `seed_states` are the random generators' states, `seeds_before`
        their values before pass 1."""
        groups = self._sam_groups(variables)
        values = [v.value for v in variables]
        scales = None
        if self.sam.adaptive:
            # Constants are scaled by their physical value, not the raw one.
            scales = [
                _constant_spec(v).asam_scale(value, self.sam.eta) if group == PHYSICAL else None
                for v, value, group in zip(variables, values, groups)
            ]
        perturbation = self.sam.perturbation(gradients, values, groups, scales=scales)
        # The perturbed weights are fed through a StatelessScope: the
        # variables are never modified, so there is nothing to restore.
        with tf.GradientTape() as tape:
            mapping, sources = [], []
            for variable, e in zip(variables, perturbation):
                if e is None:
                    sources.append(variable)
                else:
                    perturbed = variable.value + e
                    tape.watch(perturbed)
                    mapping.append((variable, perturbed))
                    sources.append(perturbed)
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
                _, perturbed_loss = self._forward_loss(x, y, sample_weight)
            scaled_loss = self.optimizer.scale_loss(perturbed_loss)
        # The random generators advance past this pass, so that the next
        # step's first pass does not reuse its dropout/noise masks. The
        # pass drew as often as pass 1 (the same computation), from where
        # pass 1 ended; its own record of the seeds cannot be read when they
        # advanced inside a loop (a random layer in an ODE correction).
        for variable, before in zip(seed_states, seeds_before):
            after_first = variable.value
            variable.assign(after_first + (after_first - before))
        perturbed_gradients = _rescale(tape.gradient(scaled_loss, sources), loss_scale, divide=True)
        # Checked with loss scaling too: a NaN gradient at the perturbed
        # point (the perturbation left an equation's domain) would reach the
        # LossScaleOptimizer, which cannot tell it from an overflow and would
        # skip every step, halving its scale each time. The plain gradient
        # is used instead (an overflow of the plain pass stays the scaler's).
        finite = ops.logical_and(ops.all(ops.isfinite(perturbed_loss)),
                                 all_finite(perturbed_gradients))
        return perturbed_gradients, ops.logical_not(_on_every_replica(finite))

    def _maybe_synchronize(self, gradients, sam):
        context = _multi_replica_context()
        if context is None or not sam.synchronized:
            return gradients
        present = [i for i, g in enumerate(gradients) if g is not None]
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [gradients[i] for i in present])
        gradients = list(gradients)
        for i, g in zip(present, reduced):
            gradients[i] = g
        return gradients


@keras.saving.register_keras_serializable(package="keras_hybrid")
class HybridModel(SAMTrainStep, keras.Model):
    """A functional Keras model trained with SAM.

    Use it exactly like `keras.Model(inputs, outputs)`. `fit`, `evaluate`,
    `predict` and saving work as usual; `train_step` is sharpness-aware
    (see `SAMTrainStep`). For a subclassed model with your own `call`,
    mix `SAMTrainStep` into it instead (Keras turns a class used with
    `inputs`/`outputs` into a functional class for good, so `HybridModel`
    itself is not a base for subclassing); or wrap any model in `SAMModel`.

    Args:
        *args: `keras.Model` arguments, e.g. `inputs, outputs`.
        sam: a `SAM` (or its config), or `None` for plain training. Defaults
            to `SAM()`.
        on_non_finite: what `fit` does with NaN/Inf in the data or the
            loss: `"warn"`, `"raise"` or `"skip"` (see
            `SAMTrainStep.on_non_finite`; a non-finite step never updates
            the weights). Defaults to `"warn"`.
        **kwargs: `keras.Model` keyword arguments (`name`, ...).

    Example:

    ```python
    inputs = keras.Input((1,))
    physics = ScientificLayer(ohm, [PhysicalConstant("R", 1.0, "ohm", "positive")])
    outputs = physics(inputs) + keras.layers.Dense(1)(inputs)
    model = HybridModel(inputs, outputs, sam=SAM(rho=0.05, perturb="neural"))
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=100)
    model.physical_constants()  # {"R": ...}
    ```

    Reference:
        Takeishi, "Sharpness-Aware Hybrid Model Learning for
        Architecture-Agnostic Parameter Estimation", arXiv:2602.06837.
    """

    def __init__(self, *args, sam="default", on_non_finite="warn", **kwargs):
        super().__init__(*args, **kwargs)
        self.sam = SAM() if isinstance(sam, str) and sam == "default" else sam
        self.on_non_finite = on_non_finite

    def get_config(self):
        config = super().get_config()
        config["sam"] = None if self.sam is None else keras.saving.serialize_keras_object(self.sam)
        config["on_non_finite"] = self.on_non_finite
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Set after the functional graph is rebuilt: Keras 3.4 builds the
        # model from its graph alone and dropped them (a loaded model then
        # trained with the default SAM).
        config = dict(config)
        sam = config.pop("sam", "default")
        on_non_finite = config.pop("on_non_finite", "warn")
        model = super().from_config(config, custom_objects=custom_objects)
        model.sam = SAM() if isinstance(sam, str) and sam == "default" else sam
        model.on_non_finite = on_non_finite
        return model


def _input_shapes(model):
    """The input shape (or structure of shapes) of a built functional or
    Sequential model, `None` when it has no symbolic inputs."""
    try:
        structure = model.input
    except (AttributeError, ValueError):
        # A Sequential model names its inputs only through `inputs`.
        structure = getattr(model, "inputs", None)
        if not structure:
            return None
        structure = structure[0] if len(structure) == 1 else structure
    return keras.tree.map_structure(lambda t: tuple(t.shape), structure)


@keras.saving.register_keras_serializable(package="keras_hybrid")
class SAMModel(SAMTrainStep, keras.Model):
    """Wraps any existing Keras model (sequential, functional, subclassed)
    so that `fit` trains it with SAM.

    The wrapper shares the wrapped model's layers and variables: training
    the wrapper trains `model`.

    Args:
        model: the `keras.Model` (or layer) to train.
        sam: a `SAM` (or its config), or `None` for plain training. Defaults
            to `SAM()`.
        on_non_finite: `"warn"`, `"raise"` or `"skip"`, as in
            `HybridModel`. Defaults to `"warn"`.
        **kwargs: `keras.Model` keyword arguments (`name`, ...).

    Example:

    ```python
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model = SAMModel(net, sam=SAM(rho=0.05))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y)
    ```
    """

    def __init__(self, model, sam="default", on_non_finite="warn", **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(f"`model` must be a Keras model or layer. Received: model={model!r}")
        self.model = model
        self.sam = SAM() if isinstance(sam, str) and sam == "default" else sam
        self.on_non_finite = on_non_finite
        if model.built:
            self.built = True
            # Keras's own `export` reads the input shapes a build records.
            shapes = _input_shapes(model)
            if shapes is not None:
                self._build_shapes_dict = {"input_shape": shapes}

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "sam": None if self.sam is None else keras.saving.serialize_keras_object(self.sam),
                "on_non_finite": self.on_non_finite,
            }
        )
        return config

