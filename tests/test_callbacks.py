import numpy as np
import pytest
import tensorflow as tf

import keras
from keras_hybrid import ConstantsHistory, PhysicalConstant, ScientificLayer, physical_constants


def _scale(x, c):
    return c["a"] * x


def test_constants_history_records_each_epoch_and_tensorboard(tmp_path):
    x = np.linspace(-1, 1, 8, dtype="float32")[:, None]
    inputs = keras.Input((1,))
    model = keras.Model(inputs, ScientificLayer(_scale, [PhysicalConstant("a", 1.0)])(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, 3 * x, batch_size=8, epochs=3, verbose=0,
                        callbacks=[ConstantsHistory(log_dir=tmp_path)])
    a = history.history["constant/a"]
    assert len(a) == 3
    # Plain gradient descent on a: a <- a - 0.1 * 2 mean(x^2) (a - 3)
    m2, expected, value = float(np.mean(x**2)), [], 1.0
    for _ in range(3):
        value = value - 0.1 * 2 * m2 * (value - 3.0)
        expected.append(value)
    np.testing.assert_allclose(a, expected, rtol=1e-5)
    assert physical_constants(model)["a"] == a[-1]
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events
    scalars = [
        float(tf.make_ndarray(v.tensor))
        for e in tf.compat.v1.train.summary_iterator(str(events[0]))
        for v in e.summary.value
        if v.tag == "constant/a"
    ]
    np.testing.assert_allclose(scalars, expected, rtol=1e-5)


def test_constants_history_refuses_keys_the_logs_already_hold():
    # With prefix="" a constant named like a metric wrote over it: the
    # history's "loss" held the constant's values.
    x = np.linspace(-1, 1, 8, dtype="float32")[:, None]
    inputs = keras.Input((1,))
    model = keras.Model(inputs, ScientificLayer(_scale_loss, [PhysicalConstant("loss", 1.0)])(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(ValueError, match=r"prefix=''.*\['loss'\].*already hold"):
        model.fit(x, 3 * x, epochs=1, verbose=0, callbacks=[ConstantsHistory(prefix="")])
    history = model.fit(x, 3 * x, epochs=1, verbose=0, callbacks=[ConstantsHistory()])
    assert history.history["loss"] != history.history["constant/loss"]


def _scale_loss(x, c):
    return c["loss"] * x
