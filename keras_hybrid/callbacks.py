"""Callbacks for hybrid models."""

import math
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
    """Reports the first non-finite training loss, naming the constants.

    A hybrid model's loss turns NaN/Inf when the data contain NaN/Inf or
    when the model itself diverges, typically an ODE that blows up for the
    current constants. The hybrid models' training step then skips the
    update (the weights keep their last finite values); this callback makes
    that visible. `HybridModel.fit` and `SAMModel.fit` add one
    automatically (mode from the model's `on_non_finite`); add it yourself
    to any other model.

    Args:
        mode: `"raise"`: stop training with a `FloatingPointError` at the
            first non-finite batch loss; `"warn"`: warn once per `fit`;
            `"skip"`: do nothing. Defaults to `"raise"`.

    Example:

    ```python
    model.fit(x, y, callbacks=[NonFiniteGuard()])
    # FloatingPointError: Non-finite training loss (nan) at epoch 3, batch 7.
    # ... Current physical constants: w0=41.2 rad/s. ...
    ```
    """

    def __init__(self, mode="raise"):
        super().__init__()
        if mode not in NON_FINITE_POLICIES:
            raise ValueError(
                f"`mode` must be one of {NON_FINITE_POLICIES}. Received: mode={mode!r}"
            )
        self.mode = mode
        self._epoch = 0
        self._warned = False

    def on_train_begin(self, logs=None):
        self._warned = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.mode == "skip" or self._warned or not logs or "loss" not in logs:
            return
        loss = float(keras.ops.convert_to_numpy(logs["loss"]))
        if math.isfinite(loss):
            return
        message = (
            f"Non-finite training loss ({loss}) at epoch {self._epoch}, batch {batch}. "
            "Either the data contain NaN/Inf (`x`, `y` or `sample_weight`) or the model "
            "diverged, e.g. its ODE blew up for the current constants. Steps with a "
            "non-finite gradient are skipped: the weights keep their last finite values. "
            f"{_describe_constants(self.model)} Consider a smaller learning rate, bounds on "
            "the constants (`constraint=(lo, hi)`), or more solver substeps."
        )
        if self.mode == "raise":
            self.model.stop_training = True
            raise FloatingPointError(message)
        self._warned = True
        warnings.warn(message, stacklevel=2)

    def get_config(self):
        return {"mode": self.mode}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
