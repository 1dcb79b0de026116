"""Callbacks for hybrid models."""

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_hybrid.layers import physical_constants

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
