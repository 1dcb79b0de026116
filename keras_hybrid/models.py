"""Keras models trained with a sharpness-aware (SAM) `train_step`."""

import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_hybrid.callbacks import NonFiniteGuard, check_non_finite_policy
from keras_hybrid.layers import constant_units, is_physical_variable, physical_constants
from keras_hybrid.sam import EXCLUDED, NEURAL, PHYSICAL, SAM, all_finite


def _as_sam(sam):
    if sam is None or isinstance(sam, SAM):
        return sam
    if isinstance(sam, dict):
        return keras.saving.deserialize_keras_object(sam) if "class_name" in sam else SAM(**sam)
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


def _non_finite_report(name, data):
    """`None`, or a sentence locating the non-finite entries of `data`
    (NumPy arrays and eager tensors only; datasets are not scanned)."""
    found = []
    for index, leaf in enumerate(tf.nest.flatten(data)):
        if isinstance(leaf, (tf.Tensor, tf.Variable)) and not tf.executing_eagerly():
            continue
        if not isinstance(leaf, (np.ndarray, tf.Tensor, tf.Variable)):
            continue
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            label = name if len(tf.nest.flatten(data)) == 1 else f"{name}[{index}]"
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            found.append(
                f"`{label}` contains {int(bad.sum())} non-finite value(s) (NaN or Inf), "
                f"the first at index {first}: {label}{list(first)}={float(array[first])}."
            )
    return " ".join(found) or None


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
       state updates of that pass are discarded.

    `g'` is applied with the compiled optimizer. With `sam=None` or a zero
    radius, the step *is* Keras's plain step. Non-finite gradients skip the
    update (the weights keep their last finite values; with a
    `keras.optimizers.LossScaleOptimizer` its own skip-and-rescale applies).

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
        """The `SAM` settings of the training step (`None`: plain steps)."""
        return getattr(self, "_sam", None)

    @sam.setter
    def sam(self, value):
        self._sam = _as_sam(value)

    @property
    def on_non_finite(self):
        """What `fit` does with NaN/Inf: `"warn"`, `"raise"` or `"skip"`.

        In every mode a step whose gradient is not finite is skipped, so the
        weights keep their last finite values. `"warn"` (the default) also
        warns once when `x`, `y` or `sample_weight` arrays passed to `fit`
        contain NaN/Inf (naming the array and the first bad index) and once
        at the first non-finite loss (naming the current physical
        constants); `"raise"` raises a `ValueError` for such arrays before
        training and a `FloatingPointError` at the first non-finite loss
        (see `NonFiniteGuard`); `"skip"` only skips.
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
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        return y_pred, loss

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with the non-finite policy `on_non_finite`.

        Arrays given as `x`, `y` or `sample_weight` are scanned for NaN/Inf
        before training; a `NonFiniteGuard` is added to the callbacks
        (unless one is there) to report a non-finite loss during training.
        Everything else is `keras.Model.fit`.
        """
        policy = self.on_non_finite
        if policy != "skip":
            for name, data in (("x", x), ("y", y), ("sample_weight", kwargs.get("sample_weight"))):
                report = _non_finite_report(name, data)
                if report is None:
                    continue
                message = f"{report} Steps on batches with these samples are skipped."
                if policy == "raise":
                    raise ValueError(
                        f"{report} Clean the data, or set `on_non_finite='warn'` to skip "
                        "the affected steps."
                    )
                warnings.warn(message, stacklevel=2)
            # `callbacks` is the sixth positional argument of `fit`; a
            # ready-made CallbackList is left as it is.
            if len(args) < 4 and not isinstance(
                kwargs.get("callbacks"), keras.callbacks.CallbackList
            ):
                callbacks = list(kwargs.get("callbacks") or [])
                if not any(isinstance(c, NonFiniteGuard) for c in callbacks):
                    callbacks.append(NonFiniteGuard(mode=policy))
                kwargs["callbacks"] = callbacks
        return super().fit(x, y, *args, **kwargs)

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
        self._build_sam_state()
        distributed = tf.distribute.has_strategy() or (
            strategy is not tf.distribute.get_strategy()
        )
        if self.jit_compile and (replicas > 1 or distributed):
            # keras-team/keras#19005: Keras cannot XLA-compile a train step
            # under a tf.distribute strategy. Fall back to graph mode.
            warnings.warn(
                "`jit_compile=True` is not supported by Keras under a tf.distribute "
                f"strategy ({type(strategy).__name__}, {replicas} replica(s)); training "
                "without XLA (keras-team/keras#19005). Compile with "
                "`jit_compile=False` to silence this warning.",
                stacklevel=2,
            )
            self.jit_compile = False
        return super().make_train_function(force=force)

    def _build_sam_state(self):
        # LookSAM keeps the last "flatness" direction between full SAM steps.
        # The state lives outside Keras's tracking: it is not a model weight
        # (not saved, not exported) and is rebuilt when training restarts.
        # A rebuilt direction is marked invalid, so the first step after a
        # restart (e.g. a resumed fit) is a full SAM step whatever the
        # iteration count; the every-k schedule then continues from the
        # optimizer's restored `iterations`.
        sam = self.sam
        if sam is None or sam.every == 1 or sam.is_plain:
            object.__setattr__(self, "_sam_direction", None)
            object.__setattr__(self, "_sam_direction_valid", None)
            return
        current = getattr(self, "_sam_direction", None)
        shapes = [tuple(v.shape) for v in self.trainable_variables]
        if current is not None and [tuple(d.shape) for d in current] == shapes:
            return
        directions = [
            tf.Variable(tf.zeros(shape, "float32"), trainable=False, name="sam_direction")
            for shape in shapes
        ]
        object.__setattr__(self, "_sam_direction", directions)
        object.__setattr__(
            self,
            "_sam_direction_valid",
            tf.Variable(False, trainable=False, name="sam_direction_valid"),
        )

    def _plain_train_step(self, data):
        # Keras's own TensorFlow train step, with the update skipped when the
        # gradient is not finite (same ops, so finite steps are bit-identical).
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = list(self.trainable_variables)
        with tf.GradientTape() as tape:
            y_pred, loss = self._forward_loss(x, y, sample_weight)
            tracker = self._loss_metric()
            if tracker is not None:
                tracker.update_state(
                    _unscale_loss_for_distribution(loss), sample_weight=_batch_size(x)
                )
            loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, variables)
        self._apply_if_finite(gradients, variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def train_step(self, data):
        sam = getattr(self, "sam", None)
        if not self.trainable_variables:
            return super().train_step(data)
        if sam is None or sam.is_plain:
            return self._plain_train_step(data)

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = list(self.trainable_variables)

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
        gradients = _rescale(tape.gradient(scaled_loss, variables), loss_scale, divide=True)
        gradients = self._maybe_synchronize(gradients, sam)

        def full_sam_step():
            return self._perturbed_gradients(x, y, sample_weight, variables, gradients, loss_scale)

        if sam.every == 1:
            final = full_sam_step()
        else:
            final = self._lookahead_gradients(sam, gradients, full_sam_step)
        # A LossScaleOptimizer expects gradients of the scaled loss.
        self._apply_if_finite(_rescale(final, loss_scale, divide=False), variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _perturbed_gradients(self, x, y, sample_weight, variables, gradients, loss_scale):
        """Gradient of the loss at `w + e` (pass 2), unscaled."""
        groups = [
            EXCLUDED if self.sam.is_excluded(v.path) else PHYSICAL if is_physical_variable(v) else NEURAL
            for v in variables
        ]
        perturbation = self.sam.perturbation(gradients, [v.value for v in variables], groups)
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
            perturbed_loss = self.optimizer.scale_loss(perturbed_loss)
        return _rescale(tape.gradient(perturbed_loss, sources), loss_scale, divide=True)

    def _lookahead_gradients(self, sam, gradients, full_sam_step):
        """LookSAM: a full SAM step every `sam.every` steps; in between,
        the plain gradient plus the stored component of the SAM gradient
        orthogonal to it (Liu et al., arXiv:2203.02714)."""
        directions = self._sam_direction
        present = [i for i, g in enumerate(gradients) if g is not None]

        def dot(a, b):
            return ops.sum(ops.stack([ops.sum(a[i] * b[i]) for i in present]))

        def full():
            sam_gradients = full_sam_step()
            g = {i: ops.cast(gradients[i], "float32") for i in present}
            gs = {i: ops.cast(sam_gradients[i], "float32") for i in present}
            coeff = dot(g, gs) / (dot(g, g) + sam.eps)
            for i in present:
                directions[i].assign(gs[i] - coeff * g[i])
            self._sam_direction_valid.assign(True)
            return [sam_gradients[i] for i in present]

        def reuse():
            g = {i: ops.cast(gradients[i], "float32") for i in present}
            v = {i: directions[i] for i in present}
            ratio = ops.sqrt(dot(g, g)) / (ops.sqrt(dot(v, v)) + sam.eps)
            return [ops.cast(g[i] + sam.alpha * ratio * v[i], gradients[i].dtype) for i in present]

        is_full_step = ops.logical_or(
            ops.equal(self.optimizer.iterations % sam.every, 0),
            ops.logical_not(self._sam_direction_valid),
        )
        chosen = ops.cond(is_full_step, full, reuse)
        out = [None] * len(gradients)
        for i, g in zip(present, chosen):
            out[i] = g
        return out

    def _maybe_synchronize(self, gradients, sam):
        if not tf.distribute.has_strategy() or not sam.synchronized:
            return gradients
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return gradients
        present = [i for i, g in enumerate(gradients) if g is not None]
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [gradients[i] for i in present])
        gradients = list(gradients)
        for i, g in zip(present, reduced):
            gradients[i] = g
        return gradients

    def _apply_if_finite(self, gradients, variables):
        pairs = list(zip(gradients, variables))
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It unscales, and skips non-finite steps itself.
            self.optimizer.apply_gradients(pairs)
            return
        strategy_needs_merge = tf.distribute.has_strategy() and not (
            tf.__internal__.distribute.strategy_supports_no_merge_call()
        )
        if strategy_needs_merge:
            self._apply_if_finite_cross_replica(gradients, variables)
            return
        def apply():
            self.optimizer.apply_gradients(pairs)

        finite = all_finite(gradients)
        context = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and context is not None and context.num_replicas_in_sync > 1:
            # Pure replica context (no merge_call, e.g. XLA on GPUs): every
            # replica must take the same branch, since applying gradients
            # all-reduces them. Skip the step if any replica is non-finite.
            bad = context.all_reduce(
                tf.distribute.ReduceOp.SUM, ops.cast(ops.logical_not(finite), "float32")
            )
            finite = ops.equal(bad, 0.0)
        ops.cond(finite, apply, lambda: None)

    def _apply_if_finite_cross_replica(self, gradients, variables):
        # A cond whose branch calls `merge_call` must run in cross-replica
        # context (as keras.optimizers.LossScaleOptimizer does).
        def cross_replica(distribution, gradients, variables):
            finite_per_replica = distribution.extended.call_for_each_replica(
                all_finite, args=(gradients,)
            )
            # Replicas see the same all-reduced verdict only if gradients are
            # synchronized; require every replica to be finite.
            finite = ops.all(ops.stack(distribution.experimental_local_results(finite_per_replica)))

            def apply_on_replica(gradients, variables):
                self.optimizer.apply_gradients(zip(gradients, variables))

            def apply():
                distribution.extended.call_for_each_replica(
                    apply_on_replica, args=(gradients, variables)
                )

            ops.cond(finite, apply, lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(gradients, variables))


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

