"""Shapes that would broadcast silently, and errors that name their cause."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_hybrid as kh

ONES = np.ones((8, 1), "float32")


def _hybrid(equation, features=1, **kwargs):
    inputs = keras.Input((features,), name="x")
    physics = kh.ScientificLayer(equation, [kh.PhysicalConstant("k", 1.0)], name="physics")
    return kh.HybridModel(inputs, physics(inputs), **kwargs)


def two_columns(x, c):
    return keras.ops.concatenate([c["k"] * x, x], axis=-1)


def linear(x, c):
    return c["k"] * x


# -- outputs against targets --------------------------------------------------


@pytest.mark.parametrize("sam", [None, kh.SAM(rho=0.1)])
def test_equation_output_wider_than_the_targets(sam):
    model = _hybrid(two_columns, sam=sam, name="m")
    model.compile(optimizer="sgd", loss="mse")
    message = (
        "Output 0 of model 'm', from layer 'physics' (equation `two_columns`), "
        "has shape (None, 2), but the targets `y` have shape (None, 1): the loss 'mse'"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        model.fit(ONES, ONES, epochs=1, verbose=0)


def test_loss_objects_are_checked_too():
    model = _hybrid(two_columns, name="m")
    model.compile(optimizer="sgd", loss=keras.losses.MeanAbsoluteError())
    with pytest.raises(ValueError, match=r"has shape \(None, 2\), but the targets `y` have "
                       r"shape \(None, 1\): the loss 'mean_absolute_error'"):
        model.fit(ONES, ONES, epochs=1, verbose=0)


def test_shapes_keras_legitimately_aligns_still_train():
    # (N,) targets for (N, 1) outputs: Keras squeezes, no broadcast.
    model = _hybrid(linear, sam=None)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(ONES, 3.0 * ONES[:, 0], epochs=1, batch_size=8, verbose=0)
    assert model.physical_constants()["k"] == pytest.approx(1.0 + 0.1 * 2 * 2.0)
    # Sparse labels (N, 1) against (N, 2) logits are not elementwise.
    inputs = keras.Input((1,))
    classifier = kh.HybridModel(inputs, keras.layers.Dense(2)(inputs))
    classifier.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    classifier.fit(ONES, np.zeros((8, 1), "int32"), epochs=1, verbose=0)


@pytest.mark.parametrize("sam", [None, "default"])
def test_fit_again_with_targets_of_another_rank(sam):
    # The second `fit` retraces the step with the shapes relaxed to an
    # unknown rank; the check has nothing to compare then, and must not fail.
    model = _hybrid(linear, **({} if sam == "default" else {"sam": None}))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(ONES, 3.0 * ONES[:, 0], epochs=1, batch_size=8, verbose=0)
    model.fit(ONES, 3.0 * ONES, epochs=1, batch_size=8, verbose=0)
    model.fit(ONES, 3.0 * ONES[:, 0], epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(model.physical_constants()["k"])


# -- ODE right-hand sides and corrections -------------------------------------


def per_sample_rate(t, y, c):
    return -c["k"] * y[:, 0]  # (batch,): wrong, broadcasts when batch == n


def expanded(t, y, c):
    return keras.ops.expand_dims(-c["k"] * y, 1)  # (batch, 1, n)


def decay(t, y, c):
    return -c["k"] * y


def _ode(equation, **kwargs):
    return kh.ODELayer(
        equation, [kh.PhysicalConstant("k", 1.0)], times=[0.0, 0.1, 0.2], name="ode", **kwargs
    )


def test_right_hand_side_of_batch_shape_when_batch_equals_state_size():
    with pytest.raises(ValueError, match=re.escape(
        "The equation `per_sample_rate` of ODELayer 'ode' must return dy/dt with the shape "
        "of the state (2, 2). Received: dy/dt with shape (2,)"
    )):
        _ode(per_sample_rate)(np.ones((2, 2), "float32"))
    inputs = keras.Input((2,))
    model = kh.HybridModel(inputs, _ode(per_sample_rate)(inputs))
    with pytest.raises(ValueError, match=r"`per_sample_rate` .* state \((None|2), 2\)\. "
                       r"Received: dy/dt with shape \((None|2),\)"):
        model.predict(np.ones((2, 2), "float32"), verbose=0)


def test_right_hand_side_of_higher_rank_at_batch_3():
    with pytest.raises(ValueError, match=re.escape(
        "The equation `expanded` of ODELayer 'ode' must return dy/dt with the shape of the "
        "state (3, 2). Received: dy/dt with shape (3, 1, 2)"
    )):
        _ode(expanded)(np.ones((3, 2), "float32"))


def test_per_sample_constants_and_context_of_another_batch_are_named():
    layer = _ode(decay)
    y0 = np.ones((4, 1), "float32")
    with pytest.raises(ValueError, match=r"4 samples in y0 but 3 rows in constants\['k'\]"):
        layer(y0, constants={"k": np.ones(3, "float32")})
    # Scalars and one row broadcast over the batch, as before.
    np.testing.assert_allclose(layer(y0, constants={"k": np.float32(0.0)}), 1.0)
    np.testing.assert_allclose(layer(y0, constants={"k": np.zeros(1, "float32")}), 1.0)
    with_context = kh.ODELayer(decay, [kh.PhysicalConstant("k", 0.5)], times=np.arange(3.0),
                               correction=keras.layers.Dense(1), context_size=2)
    with pytest.raises(ValueError, match=r"4 samples in y0 but 5 rows in context"):
        with_context(y0, context=np.ones((5, 2), "float32"))
    # One row of context is every sample's (it failed in the correction's
    # concatenation), and a context of another rank is named.
    context = np.array([[0.3, -0.2]], "float32")
    np.testing.assert_allclose(with_context(y0, context=context),
                               with_context(y0, context=np.repeat(context, 4, axis=0)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"takes a context of shape \(batch, 2\). Received: context "
                                         r"with shape \(4, 1, 2\)"):
        with_context(y0, context=np.ones((4, 1, 2), "float32"))


def test_a_fitted_initial_state_given_per_trajectory_takes_one_value_each():
    layer = kh.ODELayer(decay, [kh.PhysicalConstant("k", 0.5)], times=np.arange(3.0),
                        initial_state=[kh.PhysicalConstant("y0", 9.0)], name="fitted")
    y0 = np.zeros((4, 1), "float32")
    starts = np.array([5.0, 6.0, 7.0, 8.0], "float32")
    for given in (starts, starts[:, None]):
        np.testing.assert_allclose(layer(y0, constants={"y0": given})[:, 0, 0], starts)
    # (batch, 2) was flattened into 8 values: "Incompatible shapes: [4] vs. [8]".
    with pytest.raises(ValueError, match=r"ODELayer 'fitted': the fitted initial state 'y0' takes one "
                                         r"value per trajectory.*shape \(4, 2\)"):
        layer(y0, constants={"y0": np.ones((4, 2), "float32")})


def per_component_pair(t, y, c):
    return keras.ops.stack([-c["k"] * y[..., 0], 0.0 * y[..., 1]], -1)


def test_a_per_sample_constant_of_the_wrong_rank_is_named_when_run_eagerly():
    # A (batch, 1) constant in an equation that indexes components: the op
    # itself failed, with TensorFlow's message alone.
    layer = kh.ODELayer(per_component_pair, [kh.PhysicalConstant("k", 1.0)], times=[0.0, 0.1],
                        name="pair")
    with pytest.raises(ValueError, match=r"`per_component_pair` of layer 'pair'.*constants of "
                                         r"shapes \{'k': \(3, 1\)\}.*Shapes of all inputs must match"):
        layer(np.ones((3, 2), "float32"), constants={"k": np.ones((3, 1), "float32")})
    out = layer(np.ones((3, 2), "float32"), constants={"k": np.ones(3, "float32")})
    assert tuple(out.shape) == (3, 2, 2)


def test_correction_of_width_1_on_a_2_dimensional_state():
    layer = _ode(decay, correction=keras.layers.Dense(1, name="net"))
    with pytest.raises(ValueError, match=re.escape(
        "The correction 'net' of ODELayer 'ode' must return dy/dt with the shape of the "
        "state (None, 2). Received: a correction with shape (None, 1)"
    )):
        layer(keras.Input((2,)))
    matching = _ode(decay, correction=keras.layers.Dense(2, kernel_initializer="zeros"))
    trajectory = keras.ops.convert_to_numpy(matching(np.ones((1, 2), "float32")))
    np.testing.assert_allclose(trajectory[0, -1], np.exp(-0.2), rtol=1e-5)


# -- inputs -------------------------------------------------------------------


def test_model_built_for_one_feature_fed_three():
    model = _hybrid(linear)
    with pytest.raises(ValueError, match=re.escape(
        "ScientificLayer 'physics' (equation `linear`) was first called with 1 input(s) of "
        "shapes [(None, 1)]"
    )) as error:
        model.predict(np.ones((2, 3), "float32"), verbose=0)
    assert "Received: inputs with shapes [(" in str(error.value)
    assert ", 3)]" in str(error.value)


def test_ragged_inputs_name_the_layer():
    layer = kh.ScientificLayer(linear, [kh.PhysicalConstant("k", 1.0)], name="physics")
    ragged = tf.ragged.constant([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match=re.escape(
        "Layer 'physics' (equation `linear`) needs dense inputs of equal length per sample. "
        "Received: input 0 is a RaggedTensor with shape (2, None)"
    )):
        layer(ragged)
    model = _hybrid(linear, features=2)
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensor_slices((ragged, tf.ones((2, 2)))).batch(2)
    with pytest.raises(ValueError, match="Layer 'physics' .* needs dense inputs .* RaggedTensor"):
        model.fit(data, epochs=1, verbose=0)


# -- constants ----------------------------------------------------------------


def misspelled(x, c):
    return c["kk"] * x


def misspelled_field(t, y, c):
    return -c["rate"] * y


def test_unknown_constant_names_the_equation_and_the_constants():
    layer = kh.ScientificLayer(
        misspelled, [kh.PhysicalConstant("k", 1.0), kh.PhysicalConstant("b", 0.0)], name="physics"
    )
    message = re.escape(
        "The equation `misspelled` of layer 'physics' reads the constant 'kk', which the "
        "layer does not have. Its constants are ['b', 'k']."
    )
    with pytest.raises(KeyError, match=message):
        layer(keras.Input((1,)))  # symbolic: inside Keras's shape inference
    with pytest.raises(KeyError, match=message):
        layer(ONES)
    with pytest.raises(KeyError, match=re.escape(
        "The equation `misspelled_field` of layer 'ode' reads the constant 'rate', which the "
        "layer does not have. Its constants are ['k']."
    )):
        _ode(misspelled_field)(np.ones((3, 2), "float32"))


def test_constants_still_read_as_a_dict():
    def with_default(x, c):
        return c.get("offset", 0.5) + c["k"] * x

    layer = kh.ScientificLayer(with_default, [kh.PhysicalConstant("k", 2.0)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(ONES)), 2.5)
