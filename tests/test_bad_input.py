"""Bad input: every case gives a clear error naming the argument and the
value received (or a documented skip), and never NaN weights."""

import re
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh


@keras.saving.register_keras_serializable(package="test_bad_input")
def ohm(current, constants):
    return constants["R"] * current


def _ohm_model(on_non_finite="warn", sam=None):
    inputs = keras.Input((1,), name="current")
    layer = kh.ScientificLayer(ohm, [kh.PhysicalConstant("R", 2.0, "ohm", "positive")], name="ohm")
    model = kh.HybridModel(inputs, layer(inputs), sam=sam or kh.SAM(rho=0.1), on_non_finite=on_non_finite)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _ohm_data(n=16):
    x = np.linspace(0.1, 1.0, n, dtype="float32")[:, None]
    return x, 3.0 * x


def _weights(model):
    return [v.numpy().copy() for v in model.weights]


# -- NaN / Inf in the data ---------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_y_raises_naming_the_array_and_index(bad):
    x, y = _ohm_data()
    y[6, 0] = bad
    model = _ohm_model(on_non_finite="raise")
    before = _weights(model)
    expected = (
        r"`y` contains 1 non-finite value\(s\) \(NaN or Inf\), the first at index "
        rf"\(6, 0\): y\[6, 0\]={bad}\."
    )
    with pytest.raises(ValueError, match=expected):
        model.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_non_finite_x_and_sample_weight_are_named():
    x, y = _ohm_data()
    model = _ohm_model(on_non_finite="raise")
    x_bad = x.copy()
    x_bad[[2, 9], 0] = np.nan
    with pytest.raises(ValueError, match=r"`x` contains 2 non-finite value\(s\).*index \(2, 0\)"):
        model.fit(x_bad, y, verbose=0)
    weights = np.ones(len(x), "float32")
    weights[3] = np.inf
    with pytest.raises(ValueError, match=r"`sample_weight` contains 1 .*index \(3,\): sample_weight\[3\]=inf"):
        model.fit(x, y, sample_weight=weights, verbose=0)


def test_default_policy_warns_and_skips_the_bad_steps():
    x, y = _ohm_data()
    y[1, 0] = np.nan  # in the first batch of 4
    model = _ohm_model()
    with pytest.warns(UserWarning) as caught:
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("`y` contains 1 non-finite value(s)") for m in messages)
    assert any(m.startswith("Non-finite training loss (nan) at epoch 0, batch 0") for m in messages)
    assert np.isnan(history.history["loss"][0])
    # Three of the four steps were applied; the weights are finite.
    assert int(model.optimizer.iterations.numpy()) == 3
    assert np.isfinite(model.physical_constants()["R"])

    # The same three clean batches give the same weights: the bad one was skipped.
    clean = _ohm_model()
    clean.fit(x[4:], y[4:], batch_size=4, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(model.physical_constants()["R"], clean.physical_constants()["R"], rtol=1e-6)


def test_skip_policy_is_silent_and_a_dataset_is_caught_by_the_guard():
    x, y = _ohm_data()
    y[0, 0] = np.nan
    model = _ohm_model(on_non_finite="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == 3

    # Datasets are not scanned up front; the guard stops at the first bad loss.
    model = _ohm_model(on_non_finite="raise")
    before = _weights(model)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss \(nan\) at epoch 0, batch 0\..*R=2 ohm"):
        model.fit(dataset, epochs=1, verbose=0)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_bad_policy_values_are_named():
    with pytest.raises(ValueError, match=r"`on_non_finite` must be one of \('warn', 'raise', 'skip'\). Received: on_non_finite='stop'"):
        _ohm_model(on_non_finite="stop")
    with pytest.raises(ValueError, match=r"`mode` must be one of .* Received: mode='loud'"):
        kh.NonFiniteGuard(mode="loud")


# -- an ODE that blows up during training ------------------------------------


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def growth(t, y, constants):
    return constants["k"] * y


def test_ode_blow_up_stops_with_the_constants_and_keeps_finite_weights():
    times = np.linspace(0.0, 5.0, 11)
    y0 = np.ones((8, 1), "float32")
    target = np.exp(1.0 * times)[None, :, None] * y0[:, None, :]
    layer = kh.ODELayer(growth, [kh.PhysicalConstant("k", 0.5, "1/s")], times=times, name="growth")
    inputs = keras.Input((1,))
    model = kh.HybridModel(inputs, layer(inputs), sam=kh.SAM(rho=0.05), on_non_finite="raise")
    # A far too large learning rate: k jumps to where exp(k t) overflows.
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    history = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: history.append(model.physical_constants()["k"])
    )
    with pytest.raises(FloatingPointError) as info:
        model.fit(y0, target.astype("float32"), batch_size=8, epochs=50, verbose=0,
                  callbacks=[record])
    message = str(info.value)
    k = model.physical_constants()["k"]
    assert np.isfinite(k) and k > 17.0  # exp(5 k) overflows float32 beyond k ~ 17.7
    assert re.search(r"Non-finite training loss \((inf|nan)\)", message)
    assert f"Current physical constants: k={k:.6g} 1/s." in message
    # `record` ran after every batch, the failing one included: that step was
    # not applied, k is still the value after the last finite step.
    assert len(history) >= 2 and history[-1] == history[-2] == k
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


# -- wrong shapes --------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def two_features(x, constants):
    return constants["a"] * x[..., 0] + x[..., 1]


def test_scientific_layer_rejects_a_changed_feature_size():
    layer = kh.ScientificLayer(two_features, [kh.PhysicalConstant("a", 1.0)], name="sci")
    layer(np.ones((4, 2), "float32"))
    with pytest.raises(ValueError, match=re.escape(
        "ScientificLayer 'sci' (equation `two_features`) was first called with 1 input(s) of "
        "shapes [(4, 2)]; the rank and last dimension of each input must stay the same. "
        "Received: inputs with shapes [(4, 3)]"
    )):
        layer(np.ones((4, 3), "float32"))
    with pytest.raises(ValueError, match=r"Received: inputs with shapes \[\(4,\)\]"):
        layer(np.ones((4,), "float32"))
    # Another batch size is fine.
    np.testing.assert_allclose(layer(np.ones((7, 2), "float32")), np.full((7,), 2.0))


def test_equation_indexing_a_missing_feature_names_the_equation():
    inputs = keras.Input((1,))
    layer = kh.ScientificLayer(two_features, [kh.PhysicalConstant("a", 1.0)], name="sci")
    with pytest.raises(ValueError, match=r"The equation `two_features` of layer 'sci' failed on inputs "
                       r"with shapes \[\(None, 1\)\] and constants of shapes \{'a': \(\)\}"):
        layer(inputs)


def test_ode_layer_shape_errors():
    layer = kh.ODELayer(growth, [kh.PhysicalConstant("k", 0.5)], times=[0.0, 1.0], name="ode")
    with pytest.raises(ValueError, match=r"expects an initial state of shape \(batch, n\). Received: input_shape=\(4, 2, 1\)"):
        layer(np.ones((4, 2, 1), "float32"))
    layer(np.ones((4, 2), "float32"))
    with pytest.raises(ValueError, match=r"was built for states of size 2. Received: y0 with shape \(4, 3\)"):
        layer(np.ones((4, 3), "float32"))


def test_ode_layer_names_its_times_argument():
    constants = [kh.PhysicalConstant("k", 0.5)]
    with pytest.raises(ValueError, match=r"`times` must be finite and strictly increasing. "
                                         r"Received: times=\[0.0, 2.0, 1.0\]"):
        kh.ODELayer(growth, constants, times=[0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"`times` must be a 1-D array .* Received: times with shape \(1,\)"):
        kh.ODELayer(growth, constants, times=[0.0])


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def wrong_size_field(t, y, constants):
    return keras.ops.concatenate([y, y], axis=-1) * constants["k"]


def test_ode_equation_returning_the_wrong_shape():
    layer = kh.ODELayer(wrong_size_field, [kh.PhysicalConstant("k", 0.5)], times=[0.0, 1.0], name="ode")
    with pytest.raises(ValueError, match=re.escape(
        "The equation `wrong_size_field` of ODELayer 'ode' must return dy/dt with the shape of "
        "the state (4, 2). Received: dy/dt with shape (4, 4)"
    )):
        layer(np.ones((4, 2), "float32"))


# -- equations that cannot be traced ------------------------------------------


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def numpy_equation(x, constants):
    return np.exp(-constants["k"] * x)


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def python_branch(x, constants):
    if constants["k"] * x > 0:
        return x
    return -x


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def numpy_vector_field(t, y, constants):
    return -constants["k"] * np.asarray(y)


@pytest.mark.parametrize("equation", [numpy_equation, python_branch])
def test_untraceable_equation_in_a_functional_model(equation):
    layer = kh.ScientificLayer(equation, [kh.PhysicalConstant("k", 1.0)], name="bad")
    # Keras adds its own context around the message; ours is inside it.
    with pytest.raises(TypeError, match=rf"(?s)The equation `{equation.__name__}` of layer 'bad' failed on "
                       r"inputs with shapes \[\(None, 1\)\].*write them with `keras.ops`"):
        layer(keras.Input((1,)))


class Subclassed(kh.SAMTrainStep, keras.Model):
    def __init__(self, layer):
        super().__init__()
        self.sam = kh.SAM(rho=0.1)
        self.physics = layer

    def call(self, x):
        return self.physics(x)


def test_untraceable_equation_caught_in_fit_when_built_eagerly():
    # Called eagerly the NumPy equation runs (and silently loses gradients);
    # tracing it in fit raises the clear error.
    model = Subclassed(kh.ScientificLayer(numpy_equation, [kh.PhysicalConstant("k", 1.0)], name="bad"))
    x = np.ones((4, 1), "float32")
    model(x)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match=r"(?s)The equation `numpy_equation` of layer 'bad' failed.*NumPy"):
        model.fit(x, x, verbose=0)


def test_untraceable_ode_equation():
    layer = kh.ODELayer(numpy_vector_field, [kh.PhysicalConstant("k", 1.0)], times=[0.0, 1.0], name="bad_ode")
    inputs = keras.Input((2,))
    model = kh.HybridModel(inputs, layer(inputs))
    with pytest.raises(TypeError, match=r"(?s)The equation `numpy_vector_field` of layer 'bad_ode' failed on "
                       r"\(t, y\) with shapes \[\(\), \(4, 2\)\].*keras.ops"):
        model.predict(np.ones((4, 2), "float32"), verbose=0)


# -- SAM radius, constants -------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rho": -1}, ValueError, "`rho` must be >= 0 and finite. Received: rho=-1"),
        ({"rho": float("nan")}, ValueError, "`rho` must be >= 0 and finite. Received: rho=nan"),
        ({"rho": float("inf")}, ValueError, "`rho` must be >= 0 and finite. Received: rho=inf"),
        ({"rho": "0.1"}, TypeError, "`rho` must be a non-negative number. Received: rho='0.1'"),
        ({"rho": None}, TypeError, "`rho` must be a non-negative number. Received: rho=None"),
        ({"rho": True}, TypeError, "`rho` must be a non-negative number. Received: rho=True"),
        ({"rho_physical": -0.5}, ValueError, "`rho_physical` must be >= 0 and finite. Received: rho_physical=-0.5"),
        ({"perturb": "weights"}, ValueError, "`perturb` must be one of ('all', 'neural', 'physical'). Received: perturb='weights'"),
        ({"every": 0}, ValueError, "`every` must be an integer >= 1. Received: every=0"),
    ],
)
def test_bad_sam_settings(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        kh.SAM(**kwargs)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (("k", -1.0), {"constraint": "positive"}, ValueError,
         "Constant 'k' has constraint='positive' but its initial `value` is not > 0. Received: value=-1.0"),
        (("k", 0.0), {"constraint": "positive"}, ValueError, "Received: value=0.0"),
        (("k", 5.0), {"constraint": (0.0, 1.0)}, ValueError,
         "Initial `value` of constant 'k' must lie strictly inside its bounds (0.0, 1.0). Received: value=5.0"),
        (("k", 1.0), {"constraint": (1.0, 0.0)}, ValueError,
         "Bounds of constant 'k' must satisfy lo < hi. Received: constraint=(1.0, 0.0)"),
        (("k", float("nan")), {}, ValueError, "`value` must be finite. Received: value=nan"),
        (("k", "1.0"), {}, TypeError, "`value` must be a real number. Received: value='1.0' of type str"),
        (("2k", 1.0), {}, ValueError, "`name` must be a Python identifier string. Received: name='2k'"),
    ],
)
def test_bad_constants(args, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        kh.PhysicalConstant(*args, **kwargs)


def test_unknown_constant_names():
    layer = kh.ScientificLayer(ohm, [kh.PhysicalConstant("R", 2.0)], name="ohm")
    with pytest.raises(ValueError, match=re.escape(
        "Unknown constant names ['r'] for layer 'ohm'. Its constants are ['R']."
    )):
        layer(np.ones((2, 1), "float32"), constants={"r": np.ones((2, 1), "float32")})


def test_guard_and_policy_serialize():
    guard = kh.NonFiniteGuard(mode="warn")
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(guard))
    assert isinstance(revived, kh.NonFiniteGuard) and revived.get_config() == {"mode": "warn"}
    model = _ohm_model(on_non_finite="raise")
    assert model.get_config()["on_non_finite"] == "raise"
    assert kh.HybridModel.from_config(model.get_config()).on_non_finite == "raise"


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_guard_on_a_plain_keras_model_says_the_step_was_taken(steps_per_execution):
    # A plain model has no skipping step: the message must not claim the
    # weights were kept, and with several steps per execution Keras reports
    # only the last batch of each.
    x, y = _ohm_data()
    y[1, 0] = np.nan
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=steps_per_execution)
    with pytest.warns(UserWarning) as caught:
        model.fit(x, y, batch_size=1, epochs=1, verbose=0, shuffle=False,
                  callbacks=[kh.NonFiniteGuard(mode="warn")])
    (message,) = [str(w.message) for w in caught if "Non-finite training loss" in str(w.message)]
    assert "does not skip such steps: the update was applied" in message
    assert "last finite values" not in message
    if steps_per_execution == 1:
        assert "at epoch 0, batch 1." in message
    else:
        assert "in the 4 steps up to batch 3" in message
