"""Logging filters for the functions that build many models in a loop."""

import contextlib
import logging

RETRACING_MESSAGE = "triggered tf.function retracing"


class _DropRetracingWarnings(logging.Filter):
    def filter(self, record):
        return RETRACING_MESSAGE not in record.getMessage()


@contextlib.contextmanager
def quiet_retracing():
    """Drops TensorFlow's "N out of the last M calls ... triggered
    tf.function retracing" warning while the block runs.

    TensorFlow counts traces per function *source code*, so every new
    Keras model fitted or evaluated in a loop (one per radius, one per
    profile value) adds to the same count and sets the warning off,
    although each model traces its own functions only once or twice.
    Other TensorFlow log messages pass.
    """
    logger = logging.getLogger("tensorflow")
    drop = _DropRetracingWarnings()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
