"""Callbacks for hybrid models."""

import math
import threading
import warnings

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_hybrid.layers import constant_units, physical_constants

# What `tf.summary.scalar` writes, without needing the tensorboard package
# (which the tensorflow-cpu wheel does not pull in).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)


@keras.saving.register_keras_serializable(package="keras_hybrid")
class ConstantsHistory(keras.callbacks.Callback):
    """Records the physical constants at the end of every epoch.

    Each constant appears in `history.history` under `prefix + name` (so
    `model.fit(...).history["constant/w0"]` is the per-epoch estimate), and,
    when `log_dir` is given, as a TensorBoard scalar of the same name.

    Args:
        log_dir: directory for TensorBoard event files, or `None`.
            Defaults to `None`.
        prefix: prefix of the history keys. Defaults to `"constant/"`.

    Example:

    ```python
    history = model.fit(x, y, epochs=100, callbacks=[ConstantsHistory()])
    history.history["constant/w0"]  # one value per epoch
    ```
    """

    def __init__(self, log_dir=None, prefix="constant/"):
        super().__init__()
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a string. Received: prefix={prefix!r}")
        self.log_dir = None if log_dir is None else str(log_dir)
        self.prefix = prefix
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        values = physical_constants(self.model)
        if logs is not None:
            clashes = sorted(self.prefix + name for name in values if self.prefix + name in logs)
            if clashes:
                # Written over, the epoch's loss or metric would be lost.
                raise ValueError(
                    f"`ConstantsHistory(prefix={self.prefix!r})` would log constants under the "
                    f"keys {clashes}, which the epoch's logs already hold (a loss or metric). "
                    "Use a prefix, e.g. the default 'constant/'."
                )
            for name, value in values.items():
                logs[self.prefix + name] = value
        if self._writer is not None:
            with self._writer.as_default():
                for name, value in values.items():
                    tf.summary.write(
                        self.prefix + name,
                        tf.constant(value, tf.float32),
                        step=epoch,
                        metadata=_SCALAR_METADATA,
                    )
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self):
        return {"log_dir": self.log_dir, "prefix": self.prefix}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


NON_FINITE_POLICIES = ("warn", "raise", "skip")


def check_non_finite_policy(value):
    """Validates an `on_non_finite` policy and returns it."""
    if value not in NON_FINITE_POLICIES:
        raise ValueError(
            f"`on_non_finite` must be one of {NON_FINITE_POLICIES}. "
            f"Received: on_non_finite={value!r}"
        )
    return value


def _describe_constants(model):
    values = physical_constants(model)
    if not values:
        return "The model has no physical constants."
    units = constant_units(model)
    parts = [
        f"{name}={value:.6g}" + (f" {units[name]}" if units.get(name) else "")
        for name, value in values.items()
    ]
    return "Current physical constants: " + ", ".join(parts) + "."


@keras.saving.register_keras_serializable(package="keras_hybrid")
class NonFiniteGuard(keras.callbacks.Callback):
    """Counts and reports non-finite training steps, naming the constants.

    A hybrid model's loss turns NaN/Inf when the data contain NaN/Inf or
    when the model itself diverges, typically an ODE that blows up for the
    current constants. The hybrid models' training step then skips the
    update (the weights and the optimizer state keep their last finite
    values), or, when only SAM's perturbed pass is not finite, falls back
    to the plain gradient. This callback makes that visible: at the end of
    every epoch it adds `skipped_steps` (and, with SAM, `sam_fallbacks`) to
    the logs, so they appear in `history.history`, and warns or raises
    naming the epoch and batch of the first event. A non-finite validation
    loss is reported too. With a `LossScaleOptimizer` (mixed precision)
    the steps it skipped itself for overflowing gradients are logged as
    `loss_scale_skips` (a few are normal); an epoch of nothing else, with
    the scale below 1, is an event: the gradients are not finite even
    unscaled. `HybridModel.fit` and `SAMModel.fit` add one
    automatically (mode from the model's `on_non_finite`); add it yourself
    to any other model: it then watches the batch loss only (no counts in
    the logs), and says that such a model's step applied the update.

    The callback is safe for Keras's asynchronous callback dispatch: it
    reads the model's step counters once per epoch, and its per-batch check
    (of the logged loss, used to stop a `"raise"` fit early) runs on
    values Keras has already fetched, off the training thread.

    Args:
        mode: `"raise"`: stop training at the first non-finite batch loss
            and raise a `FloatingPointError` at the end of that epoch (also
            for a skipped step or a SAM fallback); `"warn"`: warn once per
            `fit` and kind of event; `"skip"`: only record the counts.
            Defaults to `"raise"`.

    Example:

    ```python
    model.fit(x, y, callbacks=[NonFiniteGuard()])
    # FloatingPointError: Non-finite training loss (nan) at epoch 3, batch 7.
    # ... Current physical constants: w0=41.2 rad/s. ...
    ```
    """

    async_safe = True

    def __init__(self, mode="raise"):
        super().__init__()
        if mode not in NON_FINITE_POLICIES:
            raise ValueError(
                f"`mode` must be one of {NON_FINITE_POLICIES}. Received: mode={mode!r}"
            )
        self.mode = mode
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self._warned = set()
        self._first_bad_batch = None
        # The model's step record is fully reset at the first epoch of a
        # fit and after an epoch with events; otherwise only its counter.
        self._record_clean = False

    def _record(self):
        return getattr(self.model, "_step_record", None)

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_begin(self, epoch, logs=None):
        with self._lock:
            self._first_bad_batch = None
        record = self._record()
        if record is not None:
            record.reset(steps_only=self._record_clean)
            self._record_clean = True

    def on_train_batch_end(self, batch, logs=None):
        # May run on a worker thread (asynchronous dispatch): only plain
        # Python values, no model calls.
        if self.mode == "skip" or not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        if math.isfinite(loss):
            return
        with self._lock:
            if self._first_bad_batch is None or batch < self._first_bad_batch[0]:
                self._first_bad_batch = (batch, loss)
        if self.mode == "raise":
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        events = []
        record = self._record()
        if record is not None:
            counts = record.read()
            if counts["skipped"] or counts["fallbacks"] or counts["scaler_skips"]:
                self._record_clean = False
            scaled = isinstance(getattr(self.model, "optimizer", None),
                                keras.optimizers.LossScaleOptimizer)
            if logs is not None:
                logs["skipped_steps"] = counts["skipped"]
                sam = getattr(self.model, "sam", None)
                if sam is not None and not sam.is_plain:
                    logs["sam_fallbacks"] = counts["fallbacks"]
                if scaled:
                    logs["loss_scale_skips"] = counts["scaler_skips"]
            dynamic_scale = getattr(self.model.optimizer, "dynamic_scale", None) if scaled else None
            if dynamic_scale is not None and counts["steps"] and counts["scaler_skips"] == counts["steps"]:
                scale = float(keras.ops.convert_to_numpy(dynamic_scale))
                if scale < 1.0:
                    events.append(("stalled", self._stalled_message(epoch, counts["steps"], scale)))
            if counts["skipped"]:
                events.append(("skip", self._skip_message(
                    epoch, counts["first_skip"], counts["first_skip_loss"], counts["skipped"])))
            if counts["fallbacks"]:
                events.append(("fallback", self._fallback_message(
                    epoch, counts["first_fallback"], counts["fallbacks"])))
        elif self._first_bad_batch is not None:
            batch, loss = self._first_bad_batch
            events.append(("skip", self._unguarded_message(epoch, batch, loss)))
        val_loss = (logs or {}).get("val_loss")
        if val_loss is not None and not math.isfinite(float(val_loss)):
            events.append(("validation", (
                f"Non-finite validation loss ({float(val_loss)}) at epoch {epoch}. "
                "The validation data contain NaN/Inf, or the model diverges on them. "
                f"{_describe_constants(self.model)}"
            )))
        if self.mode == "skip":
            return
        for kind, message in events:
            if self.mode == "raise":
                self.model.stop_training = True
                raise FloatingPointError(message)
            if kind not in self._warned:
                self._warned.add(kind)
                warnings.warn(message, stacklevel=2)

    def _skip_message(self, epoch, batch, loss, count):
        if math.isfinite(loss):
            head = (
                f"Training step skipped at epoch {epoch}, batch {batch}: the update would make "
                f"weights or optimizer state non-finite (loss {loss:.4g})."
            )
        else:
            head = f"Non-finite training loss ({loss}) at epoch {epoch}, batch {batch}."
        counted = f" {count} step(s) skipped in this epoch."
        return (
            f"{head}{counted} Either the data contain NaN/Inf (`x`, `y` or `sample_weight`) "
            "or the model diverged, e.g. its ODE blew up for the current constants. Skipped "
            "steps leave the weights and the optimizer state at their last finite values. "
            f"{_describe_constants(self.model)} Consider a smaller learning rate, bounds on "
            "the constants (`constraint=(lo, hi)`), or more solver substeps."
        )

    def _unguarded_message(self, epoch, batch, loss):
        # A model without the hybrid training step: nothing was skipped, and
        # Keras reports a batch once per `steps_per_execution` steps.
        per_execution = getattr(self.model, "steps_per_execution", 1)
        if isinstance(per_execution, int) and per_execution > 1:
            where = (f"in the {per_execution} steps up to batch {batch} (Keras reports the loss "
                     f"once per `steps_per_execution`={per_execution} steps)")
        else:
            where = f"batch {batch}"
        return (
            f"Non-finite training loss ({loss}) at epoch {epoch}, {where}. Either the data "
            "contain NaN/Inf (`x`, `y` or `sample_weight`) or the model diverged. This "
            "model's training step does not skip such steps: the update was applied, and its "
            "weights may now be NaN. `kh.HybridModel` (or the `kh.SAMTrainStep` mixin) skips "
            f"them and keeps the last finite weights. {_describe_constants(self.model)}"
        )

    def _stalled_message(self, epoch, steps, scale):
        # Below a scale of 1 the scaled gradients are smaller than the true
        # ones: an overflow of float16 is no longer the likely cause.
        return (
            f"The loss scaler skipped every step of epoch {epoch} ({steps} step(s)) and its scale "
            f"fell to {scale:.3g}: the gradients are not finite even unscaled, so the weights do "
            "not move. A NaN gradient (an equation evaluated outside its domain, or NaN in the "
            "data) stops mixed-precision training this way; train in float32 to see it "
            f"reported, or scale the targets down. {_describe_constants(self.model)}"
        )

    def _fallback_message(self, epoch, batch, count):
        return (
            f"The loss at SAM's perturbed weights was not finite at epoch {epoch}, batch "
            f"{batch} ({count} step(s) in this epoch): those steps used the plain gradient, "
            "without perturbation. Typically the perturbation pushes an input of an "
            "equation out of its domain (`sqrt` or `log` of a negative value). A smaller "
            "`rho`, `perturb='neural'` or a constraint on the constant avoids it. "
            f"{_describe_constants(self.model)}"
        )

    def get_config(self):
        return {"mode": self.mode}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
