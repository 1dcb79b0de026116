"""The non-finite policy of the training step: a step is applied only if
its loss, its gradient and the updated weights and optimizer state are all
finite; SAM falls back to the plain gradient when only its perturbed pass is
not finite; both are counted in the logs and reported per `on_non_finite`."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def exponential_growth(t, y, constants):
    return constants["k"] * y


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def offset(x, constants):
    return x + constants["w0"]


def _state(model):
    return [v.numpy().copy() for v in model.weights + model.optimizer.variables]


def _assert_state_equal(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


SAMS = [None, kh.SAM(rho=0.05, perturb="all")]


@pytest.mark.parametrize("sam", SAMS, ids=["plain", "sam"])
def test_finite_loss_whose_adam_update_overflows_is_skipped_with_optimizer_state(sam):
    # dy/dt = k y from y0 = 1, k = 4, RK4 with dt = 1 up to t = 10: each step
    # multiplies y by R = 1 + z + z^2/2 + z^3/6 + z^4/24 (z = 4), so y(10) is
    # about 2e15 and the loss (mean y^2, target 0) about 5e29: finite, with
    # dL/dk finite too; but Adam's second moment 0.001 g^2 overflows float32.
    # Before the fix Adam's moment became inf and k NaN two steps later.
    times = np.linspace(0.0, 10.0, 11)
    layer = kh.ODELayer(exponential_growth, [kh.PhysicalConstant("k", 4.0, "1/s")], times=times)
    inputs = keras.Input((1,))
    model = kh.HybridModel(inputs, layer(inputs), sam=sam)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    y0 = np.ones((4, 1), "float32")
    target = np.zeros((4, 11, 1), "float32")
    model.optimizer.build(model.trainable_variables)
    before = _state(model)
    with pytest.warns(UserWarning, match=r"Training step skipped at epoch 0, batch 0: the update "
                      r"would make weights or optimizer state non-finite \(loss 4\.71[0-9]e\+29\)"):
        history = model.fit(y0, target, batch_size=4, epochs=3, verbose=0)
    r = 1 + 4 + 4**2 / 2 + 4**3 / 6 + 4**4 / 24
    expected_loss = np.mean(r ** (2.0 * np.arange(11)))
    np.testing.assert_allclose(history.history["loss"], [expected_loss] * 3, rtol=1e-4)
    assert history.history["skipped_steps"] == [1, 1, 1]
    assert int(model.optimizer.iterations.numpy()) == 0
    _assert_state_equal(before, _state(model))  # k, Adam's moments, the count


def test_infinite_loss_with_finite_gradient_is_skipped_with_sgd():
    # out = x + w0 with x = 1e30: the squared error overflows (loss inf) while
    # dL/draw = 2 * 1e30 * sigmoid(raw) is finite. SGD used to apply it:
    # w0 = softplus(raw - 1e29) = 0.0.
    inputs = keras.Input((1,))
    layer = kh.ScientificLayer(offset, [kh.PhysicalConstant("w0", 0.5, "rad/s", "positive")])
    model = kh.HybridModel(inputs, layer(inputs), on_non_finite="skip")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.full((4, 1), 1e30, "float32")
    history = model.fit(x, np.zeros((4, 1), "float32"), batch_size=4, epochs=2, verbose=0)
    assert np.isinf(history.history["loss"][0])
    assert history.history["skipped_steps"] == [1, 1]
    assert int(model.optimizer.iterations.numpy()) == 0
    np.testing.assert_allclose(model.physical_constants()["w0"], 0.5, rtol=1e-6)


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
class SqrtGain(keras.layers.Layer):
    """`sqrt(w) * x` with `w = 0`: a finite loss with an infinite gradient."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(), initializer="zeros", name="w")

    def call(self, x):
        return keras.ops.sqrt(self.w) * x


@pytest.mark.parametrize("sam", SAMS, ids=["plain", "sam"])
def test_infinite_gradient_is_skipped_even_when_clipping_makes_the_update_finite(sam):
    # clipvalue maps the -Inf gradient to -1: the update would be finite
    # (w = 0.1), so only the check of the gradient itself can skip it.
    inputs = keras.Input((1,))
    model = kh.HybridModel(inputs, SqrtGain()(inputs), sam=sam, on_non_finite="skip")
    model.compile(optimizer=keras.optimizers.SGD(0.1, clipvalue=1.0), loss="mse")
    ones = np.ones((4, 1), "float32")
    history = model.fit(ones, ones, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["skipped_steps"] == [1]
    assert float(model.layers[-1].w.numpy()) == 0.0
    assert int(model.optimizer.iterations.numpy()) == 0


def _offset_model(on_non_finite):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,))
    layer = kh.ScientificLayer(offset, [kh.PhysicalConstant("w0", 0.5, "rad/s", "positive")])
    model = kh.HybridModel(inputs, layer(inputs), on_non_finite=on_non_finite)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def test_raise_stop_leaves_adam_finite_and_a_clean_fit_is_unaffected():
    # A "raise" fit stopped by an inf loss used to leave Adam's moments at
    # inf (v = 0.001 * (8e29)^2); the next fit on clean data then diverged.
    x_clean = np.linspace(0.0, 1.0, 8, dtype="float32")[:, None]
    y_clean = x_clean + 2.0
    model = _offset_model("raise")
    model.optimizer.build(model.trainable_variables)
    before = _state(model)
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss \(inf\) at epoch 0, batch 0\..*w0=0\.5 rad/s"):
        model.fit(np.full((4, 1), 1e30, "float32"), np.zeros((4, 1), "float32"), epochs=3, verbose=0)
    _assert_state_equal(before, _state(model))
    model.fit(x_clean, y_clean, batch_size=4, epochs=5, verbose=0, shuffle=False)
    fresh = _offset_model("raise")
    fresh.fit(x_clean, y_clean, batch_size=4, epochs=5, verbose=0, shuffle=False)
    _assert_state_equal(_state(fresh), _state(model))
    assert abs(model.physical_constants()["w0"] - 0.5) > 0.1  # it trained


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
class _Log(keras.layers.Layer):
    def call(self, x):
        return keras.ops.log(x)


def _log_model(sam, on_non_finite="warn"):
    # y_hat = log(b + a x) with b = 0.1, a = 0: the target 2 pulls b up, so
    # SAM's ascent e = rho g / |g| (rho = 0.3) moves b to 0.1 - 0.3 < 0,
    # where log is NaN. The unperturbed pass is finite.
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(1, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(0.1))
    model = kh.HybridModel(inputs, _Log()(dense(inputs)), sam=sam, on_non_finite=on_non_finite)
    model.compile(optimizer=keras.optimizers.SGD(0.001), loss="mse")
    return model


def test_non_finite_perturbed_pass_falls_back_to_the_plain_gradient():
    x = np.linspace(0.0, 1.0, 8, dtype="float32")[:, None]
    y = np.full((8, 1), 2.0, "float32")
    sam_model, plain = _log_model(kh.SAM()), _log_model(None)
    with pytest.warns(UserWarning, match=r"The loss at SAM's perturbed weights was not finite at "
                      r"epoch 0, batch 0 \(2 step\(s\) in this epoch\): those steps used the plain gradient"):
        history = sam_model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    plain.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    assert history.history["sam_fallbacks"] == [2, 2]
    assert history.history["skipped_steps"] == [0, 0]
    assert int(sam_model.optimizer.iterations.numpy()) == 4  # not stalled
    # The plain steps, by hand: r = log(b + a x) - 2, dL/db = mean(2 r / (b + a x)).
    a, b = 0.0, 0.1
    for batch in (x[:4, 0], x[4:, 0]) * 2:
        p = b + a * batch
        r = np.log(p) - 2.0
        a, b = a - 0.001 * np.mean(2 * r * batch / p), b - 0.001 * np.mean(2 * r / p)
    np.testing.assert_allclose(sam_model.weights[0].numpy(), [[a]], rtol=1e-5)
    np.testing.assert_allclose(sam_model.weights[1].numpy(), [b], rtol=1e-5)
    for u, v in zip(sam_model.weights, plain.weights):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-6)

    strict = _log_model(kh.SAM(), on_non_finite="raise")
    with pytest.raises(FloatingPointError, match="perturbed weights was not finite at epoch 0, batch 0"):
        strict.fit(x, y, batch_size=4, epochs=2, verbose=0)


def test_non_finite_validation_data_is_covered_by_the_policy():
    x = np.linspace(0.1, 1.0, 8, dtype="float32")[:, None]
    y = x + 1.0
    y_val = y.copy()
    y_val[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"`validation_data\[1\]` contains 1 non-finite value\(s\) "
                       r"\(NaN or Inf\), the first at index \(2, 0\)"):
        _offset_model("raise").fit(x, y, validation_data=(x, y_val), verbose=0)
    with pytest.warns(UserWarning, match=r"`validation_data\[1\]` contains 1 non-finite"):
        _offset_model("warn").fit(x, y, validation_data=(x, y_val), verbose=0)
    # A dataset is not scanned; the non-finite validation loss is reported.
    val = tf.data.Dataset.from_tensor_slices((x, y_val)).batch(4)
    with pytest.raises(FloatingPointError, match=r"Non-finite validation loss \(nan\) at epoch 0\..*w0="):
        _offset_model("raise").fit(x, y, validation_data=val, epochs=2, verbose=0)


def test_default_callbacks_are_async_safe(monkeypatch):
    # Keras dispatches batch callbacks asynchronously (no host sync per
    # batch) only if every callback is async-safe or has no batch hook, and
    # only on backends it declares thread-safe (Keras 3.15: not TensorFlow,
    # where it converts the logs on every batch for every model).
    seen = []
    original = keras.callbacks.CallbackList.on_train_begin

    def spy(self, logs=None):
        seen.append(self)
        return original(self, logs)

    monkeypatch.setattr(keras.callbacks.CallbackList, "on_train_begin", spy)
    for policy in ("warn", "raise", "skip"):
        model = _offset_model(policy)
        x = np.linspace(0.0, 1.0, 8, dtype="float32")[:, None]
        model.fit(x, x, batch_size=4, epochs=1, verbose=0)
    assert len(seen) == 3
    base = keras.callbacks.Callback
    for callbacks in seen:
        assert any(isinstance(c, kh.NonFiniteGuard) for c in callbacks.callbacks)
        for c in callbacks.callbacks:
            per_batch = any(
                getattr(type(c), hook) is not getattr(base, hook)
                for hook in ("on_batch_end", "on_train_batch_end")
            )
            assert getattr(c, "async_safe", False) or not per_batch, c


def test_skipped_steps_are_logged_without_a_guard_warning_in_skip_mode():
    x = np.linspace(0.1, 1.0, 8, dtype="float32")[:, None]
    y = x + 1.0
    y[5, 0] = np.inf  # the second batch of 4
    model = _offset_model("skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    assert history.history["skipped_steps"] == [1, 1]
    assert int(model.optimizer.iterations.numpy()) == 2


def _offset_sam_model(on_non_finite, steps_per_execution):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,))
    layer = kh.ScientificLayer(offset, [kh.PhysicalConstant("w0", 0.5, "rad/s", "positive")])
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    outputs = keras.layers.Add()([layer(inputs), keras.layers.Dense(1)(hidden)])
    model = kh.HybridModel(inputs, outputs, sam=kh.SAM(rho=0.05, perturb="all"),
                           on_non_finite=on_non_finite)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse",
                  steps_per_execution=steps_per_execution)
    return model


def test_several_steps_per_execution_train_and_record_like_one():
    # 16 points, batches of 4: four steps per epoch, the second with an inf
    # target. Four steps per call of the train function must give the same
    # weights, optimizer state and records as one step per call.
    x = np.linspace(0.1, 1.0, 16, dtype="float32")[:, None]
    y = x + 1.0
    y[5, 0] = np.inf
    histories, states = [], []
    for steps_per_execution in (1, 4):
        model = _offset_sam_model("skip", steps_per_execution)
        histories.append(model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False).history)
        states.append(_state(model))
        assert int(model.optimizer.iterations.numpy()) == 6
    for history in histories:
        assert history["skipped_steps"] == [1, 1] and history["sam_fallbacks"] == [0, 0]
    for u, v in zip(*states):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    # The step reported is the batch within the epoch, not the call.
    model = _offset_sam_model("warn", 4)
    with pytest.warns(UserWarning, match="Non-finite training loss \\(inf\\) at epoch 0, batch 1"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)


# -- mixed precision: the loss scaler's own skips --------------------------


@keras.saving.register_keras_serializable(package="test_non_finite")
def resistance_law(x, constants):
    return constants["R"] * x


@keras.saving.register_keras_serializable(package="test_non_finite")
class SqrtOfRoom(keras.layers.Layer):
    """`w x + 0.01 sqrt(relu(0.02 - |w|))`: finite everywhere, with a NaN
    gradient once `|w| >= 0.02` (as at SAM's perturbed point)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(1, 1), initializer="zeros", name="w")

    def call(self, x):
        w = keras.ops.cast(self.w, x.dtype)
        room = keras.ops.relu(keras.ops.cast(0.02, x.dtype) - keras.ops.abs(w))
        return keras.ops.matmul(x, w) + keras.ops.cast(0.01, x.dtype) * keras.ops.sqrt(room)


def _ohm_model(sam, extra=None, on_non_finite="warn"):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((1,))
    law = kh.ScientificLayer(resistance_law, [kh.PhysicalConstant("R", 1.0, constraint="positive")])
    out = law(inputs) + keras.layers.Dense(1)(keras.layers.Dense(4, "tanh")(inputs))
    if extra is not None:
        out = out + extra(inputs)
    return kh.HybridModel(inputs, out, sam=sam, on_non_finite=on_non_finite)


@pytest.fixture
def mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


def test_nan_gradient_of_the_perturbed_pass_falls_back_under_mixed_precision(mixed_precision):
    """The loss scaler cannot tell a NaN gradient from an overflow: given
    the perturbed pass's NaN gradient it skipped every step and halved
    its scale each time. SAM falls back to the plain gradient instead, as
    in float32, and counts it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1)).astype("float32")
    y = (2.0 * x + 0.3 * np.sin(3 * x)).astype("float32")
    model = _ohm_model(kh.SAM(rho=0.3), extra=SqrtOfRoom())
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 8
    assert history.history["sam_fallbacks"] == [4, 4]
    assert history.history["loss_scale_skips"] == [0, 0]
    assert float(model.optimizer.dynamic_scale.numpy()) == 32768.0
    assert any("perturbed weights was not finite" in str(w.message) for w in caught)


def test_steps_the_loss_scaler_skips_are_counted_and_a_stall_is_reported(mixed_precision):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1)).astype("float32")
    # Targets in the thousands: the scaled gradients overflow float16 until
    # the scale has come down.
    y = 1000.0 * (2.0 * x + 0.3 * np.sin(3 * x)).astype("float32")
    for sam in (None, kh.SAM(rho=0.3)):
        model = _ohm_model(sam)
        model.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse")
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        skips = history.history["loss_scale_skips"]
        assert sum(skips) == 8 - int(model.optimizer.iterations.numpy()) > 0, skips
        assert history.history["skipped_steps"] == [0, 0]
    # A NaN gradient that no scale can cure: every step skipped, the scale
    # below 1, and the guard says so (raises under "raise").
    model = _ohm_model(None, extra=SqrtOfRoom(), on_non_finite="raise")
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e-6),
                                                                initial_scale=8.0), loss="mse")
    for layer in model.layers:
        if isinstance(layer, SqrtOfRoom):
            layer.w.assign([[0.05]])
    with pytest.raises(FloatingPointError, match=r"loss scaler skipped every step of epoch 0 \(4 step"):
        model.fit(x, y / 1000.0, epochs=3, batch_size=16, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert float(model.optimizer.dynamic_scale.numpy()) == 0.5
