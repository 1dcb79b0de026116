"""ScientificLayer and ODELayer: constants, per-sample constants, models."""

import numpy as np
import pytest

import keras
from keras_hybrid import SAM, HybridModel, ODELayer, PhysicalConstant, ScientificLayer


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def ohm(current, constants):
    return constants["R"] * current


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def decay(t, y, constants):
    return -constants["k"] * y


def _resistor(value=10.0):
    return ScientificLayer(ohm, [PhysicalConstant("R", value, unit="ohm", constraint="positive")])


def test_algebraic_layer_computes_equation_with_physical_value():
    layer = _resistor(10.0)
    out = np.asarray(layer(np.array([[1.0], [2.0]], "float32")))
    np.testing.assert_allclose(out, [[10.0], [20.0]], rtol=1e-5)
    np.testing.assert_allclose(layer.physical_constants()["R"], 10.0, rtol=1e-6)
    assert layer.units() == {"R": "ohm"}
    # Stored unconstrained: value = scale * exp(raw), scale = 10, so raw = 0.
    assert layer.weights[0].numpy() == 0.0


def test_per_sample_constants_override_owned_ones():
    layer = _resistor(10.0)
    current = np.array([[1.0], [1.0]], "float32")
    out = np.asarray(layer(current, constants={"R": np.array([[2.0], [3.0]], "float32")}))
    np.testing.assert_allclose(out, [[2.0], [3.0]])


def test_unknown_constant_name_is_rejected():
    with pytest.raises(ValueError, match=r"\['C'\].*\['R'\]"):
        _resistor()(np.ones((1, 1), "float32"), constants={"C": 1.0})


def test_duplicate_constant_names_are_rejected():
    with pytest.raises(ValueError, match="duplicates"):
        ScientificLayer(ohm, [PhysicalConstant("R", 1.0), PhysicalConstant("R", 2.0)])


def test_non_callable_equation_is_rejected():
    with pytest.raises(TypeError, match="equation=3"):
        ScientificLayer(3, [PhysicalConstant("R", 1.0)])


def test_recovers_constant_within_one_percent():
    rng = np.random.default_rng(0)
    current = rng.uniform(0.1, 2.0, (256, 1)).astype("float32")
    voltage = (4.7 * current + 0.01 * rng.standard_normal((256, 1))).astype("float32")
    inputs = keras.Input((1,))
    model = HybridModel(inputs, _resistor(1.0)(inputs), sam=SAM(rho=0.05, perturb="all"))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(current, voltage, batch_size=64, epochs=100, verbose=0)
    assert abs(model.physical_constants()["R"] - 4.7) / 4.7 < 0.01
    assert model.constant_units() == {"R": "ohm"}


def test_additive_output_hybrid_and_serialization(tmp_path):
    inputs = keras.Input((1,))
    physics = _resistor(2.0)
    outputs = keras.layers.Add()([physics(inputs), keras.layers.Dense(1)(keras.layers.Dense(8, "tanh")(inputs))])
    model = HybridModel(inputs, outputs, sam=SAM(rho=0.05, perturb="neural"))
    x = np.linspace(0, 1, 16, dtype="float32")[:, None]
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, 3 * x + x**2, epochs=3, verbose=0)
    model.save(tmp_path / "hybrid.keras")
    loaded = keras.saving.load_model(tmp_path / "hybrid.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.physical_constants() == model.physical_constants()
    assert loaded.constant_units() == {"R": "ohm"}
    spec = loaded.get_layer(physics.name).constant_specs[0]
    assert spec.constraint == "positive"


def test_ode_layer_exponential_decay_matches_analytic():
    times = np.linspace(0.0, 1.0, 11)
    layer = ODELayer(decay, [PhysicalConstant("k", 2.0, unit="1/s", constraint="positive")], times=times, substeps=4)
    y0 = np.array([[1.0], [3.0]], "float32")
    y = np.asarray(layer(y0))
    assert y.shape == (2, 11, 1)
    np.testing.assert_allclose(y[..., 0], y0 * np.exp(-2.0 * times)[None], rtol=1e-5)


def test_ode_layer_with_correction_and_per_sample_constants(tmp_path):
    times = np.linspace(0.0, 1.0, 6)
    correction = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros",
                                                                         bias_initializer=keras.initializers.Constant(0.5))])
    layer = ODELayer(decay, [PhysicalConstant("k", 1.0)], times=times, substeps=8,
                     correction=correction, correction_inputs="state_and_time")
    y0 = np.zeros((2, 1), "float32")
    k = np.array([[1.0], [2.0]], "float32")
    y = np.asarray(layer(y0, constants={"k": k}))
    # y' = -k y + 0.5, y(0) = 0 -> y = 0.5/k (1 - exp(-k t))
    expected = 0.5 / k * (1 - np.exp(-k * times[None, :]))
    np.testing.assert_allclose(y[..., 0], expected, rtol=1e-5, atol=1e-7)
    physics, net = layer.vector_field_parts(0.0, np.ones((2, 1), "float32"))
    np.testing.assert_allclose(np.asarray(physics), -1.0)
    np.testing.assert_allclose(np.asarray(net), 0.5)
    restored = ODELayer.from_config(layer.get_config())
    restored.build((None, 1))
    restored.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(restored(y0, constants={"k": k})), y)


def test_ode_layer_rejects_wrong_state_shape():
    layer = ODELayer(decay, [PhysicalConstant("k", 1.0)], times=[0.0, 1.0])
    layer(np.ones((2, 1), "float32"))
    with pytest.raises(ValueError, match=r"states of size 1.*\(2, 3\)"):
        layer(np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="input_shape"):
        ODELayer(decay, [PhysicalConstant("k", 1.0)], times=[0.0, 1.0])(np.ones((2,), "float32"))


def test_ode_layer_context_reaches_the_correction():
    # correction = context (identity Dense on the context column), so
    # y' = -k y + c, y(0) = 0 -> y = c/k (1 - exp(-k t)).
    times = np.linspace(0.0, 1.0, 5)
    correction = keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Constant([[0.0], [1.0]]))])
    layer = ODELayer(decay, [PhysicalConstant("k", 2.0)], times=times, substeps=8,
                     correction=correction, context_size=1)
    c = np.array([[1.0], [3.0]], "float32")
    y = np.asarray(layer(np.zeros((2, 1), "float32"), context=c))
    np.testing.assert_allclose(y[..., 0], c / 2.0 * (1 - np.exp(-2.0 * times[None])), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="context_size=1"):
        layer(np.zeros((2, 1), "float32"))
    inputs, context = keras.Input((1,)), keras.Input((1,))
    model = keras.Model([inputs, context], layer(inputs, context=context))
    np.testing.assert_allclose(model.predict([np.zeros((2, 1)), c], verbose=0), y, rtol=1e-6)
