import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def gradients_at_perturbed_weights():
    """`compute(model, loss, shift=0.05)`: the gradient of `loss()` with
    respect to every trainable weight of `model` shifted by `shift`, the
    shifted values given through a `keras.StatelessScope` (as in SAM's
    second pass, where the variables themselves are never assigned)."""

    def compute(model, loss, shift=0.05):
        with tf.GradientTape() as tape:
            mapping = []
            for variable in model.trainable_variables:
                perturbed = variable.value + shift * tf.ones_like(variable.value)
                tape.watch(perturbed)
                mapping.append((variable, perturbed))
            with keras.StatelessScope(state_mapping=mapping):
                value = loss()
        return tape.gradient(value, [p for _, p in mapping])

    return compute
