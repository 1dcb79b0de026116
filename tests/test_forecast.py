"""Trajectories at other times than a model was built for: `ODELayer.with_times`
and `kh.with_times` (forecasts beyond the training horizon)."""

import numpy as np
import pytest

import keras
import keras_hybrid as kh
from keras_hybrid.systems import pendulum

TRAIN_TIMES = np.arange(21) * 0.1
LONG_TIMES = np.arange(61) * 0.1  # three times the training horizon


@keras.saving.register_keras_serializable(package="test_forecast")
def forecast_decay(t, y, c):
    return -c["k"] * y


def _pendulum_layer(times=TRAIN_TIMES, **kwargs):
    return kh.ODELayer(
        pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 1.2, constraint="positive")],
        times=times, correction=keras.Sequential([keras.layers.Dense(4, "tanh"), keras.layers.Dense(2)]), **kwargs)


def _y0():
    return np.array([[0.5, 0.0], [0.2, 0.1]], "float32")


def test_layer_with_times_continues_the_solution_beyond_the_horizon():
    layer = kh.ODELayer(forecast_decay, [kh.PhysicalConstant("k", 0.3)],
                        times=np.linspace(0.0, 1.0, 11), substeps=4)
    layer.set_constant("k", 0.7)  # a "trained" value, which the copy must carry
    y0 = np.ones((1, 1), "float32")
    layer(y0)
    long = np.linspace(0.0, 10.0, 101)
    forecast = layer.with_times(long)
    np.testing.assert_allclose(forecast(y0).numpy()[0, :, 0], np.exp(-0.7 * long), atol=1e-6)
    assert forecast.name != layer.name
    # Independent copies: changing one leaves the other.
    forecast.set_constant("k", 0.1)
    assert layer.physical_constants()["k"] == pytest.approx(0.7)


def test_model_with_times_shares_the_other_layers_and_extends_the_prediction():
    layer = _pendulum_layer()
    inputs = keras.Input((2,))
    decoder = keras.layers.Dense(1, name="decoder")
    model = kh.HybridModel(inputs, decoder(layer(inputs)))
    model.compile(optimizer="adam", loss="mse")
    model.fit(_y0(), np.ones((2, 21, 1), "float32"), epochs=3, verbose=0)
    forecast = kh.with_times(model, LONG_TIMES)
    assert isinstance(forecast, kh.HybridModel)
    predicted = forecast.predict(_y0(), verbose=0)
    assert predicted.shape == (2, 61, 1)
    np.testing.assert_allclose(predicted[:, :21], model.predict(_y0(), verbose=0), rtol=0, atol=0)
    assert forecast.get_layer("decoder") is decoder  # the trained decoder itself
    ode_copy = [lay for lay in forecast.layers if isinstance(lay, kh.ODELayer)][0]
    assert ode_copy is not layer and ode_copy.physical_constants() == layer.physical_constants()


def test_with_times_through_wrappers_and_nested_models():
    y0 = _y0()
    inner_in = keras.Input((2,))
    inner = keras.Model(inner_in, _pendulum_layer()(inner_in))
    outer_in = keras.Input((2,))
    nested = kh.HybridModel(outer_in, inner(outer_in))
    wrapped = kh.SAMModel(keras.Sequential([keras.Input((2,)), _pendulum_layer()]))
    for model in (nested, wrapped):
        forecast = kh.with_times(model, LONG_TIMES)
        predicted = forecast.predict(y0, verbose=0)
        assert predicted.shape == (2, 61, 2)
        np.testing.assert_allclose(predicted[:, :21], model.predict(y0, verbose=0), atol=1e-7)


def test_the_copy_keeps_the_constants_keys_and_the_training_settings():
    inputs = keras.Input((2,))
    # Two constants named w0: their keys carry the layers' names.
    left, right = _pendulum_layer(name="left"), _pendulum_layer(name="right")
    outputs = keras.layers.Concatenate()([left(inputs), right(inputs)])
    model = kh.HybridModel(inputs, outputs, sam=kh.SAM(rho=0.07), on_non_finite="raise")
    forecast = kh.with_times(model, LONG_TIMES)
    assert list(kh.physical_constants(forecast)) == ["left/w0", "right/w0"]
    assert forecast.sam == kh.SAM(rho=0.07) and forecast.on_non_finite == "raise"


@keras.saving.register_keras_serializable(package="test_forecast")
class _HoldsAnODELayer(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ode = kh.ODELayer(forecast_decay, [kh.PhysicalConstant("k", 0.7)], times=TRAIN_TIMES)

    def call(self, y0):
        return self.ode(y0)


def test_with_times_copies_a_model_with_operations_between_its_layers():
    # Tutorial 6's model slices its input (`episode[:, 0, :]`): the copy
    # passes such operations through (the check of layers holding an
    # ODELayer asked them for their layers, and raised).
    inputs = keras.Input((3, 2))
    model = kh.HybridModel(inputs, _pendulum_layer()(inputs[:, 0, :]))
    y0 = np.stack([_y0()] * 3, axis=1)
    predicted = kh.with_times(model, LONG_TIMES).predict(y0, verbose=0)
    np.testing.assert_allclose(predicted[:, :21], model.predict(y0, verbose=0), atol=1e-7)


def test_an_ode_layer_inside_another_layer_is_refused_not_left_at_its_old_times():
    inputs = keras.Input((1,))
    model = keras.Model(inputs, _HoldsAnODELayer(name="block")(inputs))
    # It used to be shared, and the "forecast" ended at the old horizon.
    with pytest.raises(TypeError, match=r"layer 'block' \(_HoldsAnODELayer\) holds ODELayer"):
        kh.with_times(model, LONG_TIMES)


def test_times_cannot_be_assigned_and_other_models_get_clear_errors():
    layer = _pendulum_layer()
    inputs = keras.Input((2,))
    model = kh.HybridModel(inputs, layer(inputs))
    model.predict(_y0(), verbose=0)
    # Assigning used to change the layer's own calls but not the model's
    # predictions (traced for the old times), silently.
    with pytest.raises(AttributeError, match=r"cannot be changed.*with_times.*shape \(61,\)"):
        layer.times = LONG_TIMES
    assert model.predict(_y0(), verbose=0).shape == (2, 21, 2)
    with pytest.raises(AttributeError, match=r"`substeps` .* cannot be changed once .*substeps=4"):
        layer.substeps = 4
    finer = layer.with_times(layer.times, substeps=4, method="midpoint")
    assert (finer.substeps, finer.method, layer.substeps, layer.method) == (4, "midpoint", 1, "rk4")
    shooting = kh.MultipleShooting(_pendulum_layer(), segment_length=10, state_size=2)
    with pytest.raises(TypeError, match=r"model.layer.with_times\(times\)"):
        kh.with_times(shooting, LONG_TIMES)
    assert shooting.layer.with_times(LONG_TIMES)(_y0()).shape == (2, 61, 2)
    with pytest.raises(ValueError, match="holds no ODELayer"):
        kh.with_times(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), LONG_TIMES)
    with pytest.raises(ValueError, match="strictly increasing"):
        layer.with_times([1.0, 0.0])
    with pytest.raises(TypeError, match="`model` must be a Keras model"):
        kh.with_times(layer, LONG_TIMES)


@pytest.mark.parametrize("apply", ["layer", "model"])
@pytest.mark.parametrize(
    "times, kwargs, error, match",
    [
        ([0.0, 0.5, 0.2], {}, ValueError, r"^`times` must be finite and strictly increasing"),
        (LONG_TIMES, {"max_step": -1.0}, ValueError, r"^`max_step` must be None or a number > 0"),
        (LONG_TIMES, {"max_stp": 0.1}, TypeError, r"^`with_times` got arguments .* \['max_stp'\]"),
    ],
)
def test_with_times_names_a_bad_argument(apply, times, kwargs, error, match):
    # The argument's own error, short: not "could not be copied" (with
    # advice that fails the same way), nor Keras's dump of the whole config.
    layer = _pendulum_layer()
    inputs = keras.Input((2,))
    model = kh.HybridModel(inputs, layer(inputs))
    with pytest.raises(error, match=match) as caught:
        if apply == "layer":
            layer.with_times(times, **kwargs)
        else:
            kh.with_times(model, times, **kwargs)
    assert len(str(caught.value)) < 400
