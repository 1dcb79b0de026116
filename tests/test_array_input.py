"""Arrays given to the hybrid models' `fit`: one data iterator per `fit`,
the same batches as `keras.Model.fit`."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_hybrid as kh
from keras_hybrid import _array_input, models


def _model(seed, sam="default"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(1)(keras.layers.Dense(8, "tanh")(inputs))
    model = kh.HybridModel(inputs, outputs, **({} if sam == "default" else {"sam": sam}))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _data(n=10):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype("float32")
    y = np.sin(x[:, :1]) + 0.5 * x[:, 1:]
    return x, y


def _fit(model, seed, **kwargs):
    keras.utils.set_random_seed(seed)
    return model.fit(verbose=0, **kwargs).history


def _arguments(model=None, **given):
    given.setdefault("epochs", 3)
    fit = keras.Model.fit.__get__(model or _model(0, sam=None))
    bound = inspect.signature(fit).bind(**given)
    bound.apply_defaults()  # as the hybrid models' `fit` does
    return _array_input.one_iterator_fit_arguments(dict(bound.arguments))


def _ids_per_epoch(arguments, epochs):
    iterator = iter(arguments["x"])
    steps = arguments["steps_per_epoch"]
    return [
        tuple(np.concatenate([next(iterator)[0].numpy()[:, 0] for _ in range(steps)]).astype(int))
        for _ in range(epochs)
    ]


@pytest.mark.parametrize("sam", ["default", None], ids=["sam", "plain"])
def test_seeded_fit_gives_the_weights_of_keras_own_array_path(monkeypatch, sam):
    # Mini-batches (4 + 4 of the 8 training samples), a validation split,
    # sample weights: everything that decides which samples a step sees.
    x, y = _data()
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    kwargs = dict(x=x, y=y, sample_weight=weights, batch_size=4, epochs=6, validation_split=0.2)
    fast = _model(1, sam)
    fast_history = _fit(fast, 2, **kwargs)
    monkeypatch.setattr(models, "one_iterator_fit_arguments", lambda arguments, *_: None)
    keras_path = _model(1, sam)
    keras_history = _fit(keras_path, 2, **kwargs)
    for a, b in zip(fast.get_weights(), keras_path.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert fast_history["loss"] == keras_history["loss"]
    assert fast_history["val_loss"] == keras_history["val_loss"]
    assert len(fast_history["loss"]) == 6


def test_arrays_become_one_repeated_dataset_with_the_epoch_steps():
    x, y = _data()
    arguments = _arguments(x=x, y=y, batch_size=4, validation_split=0.2)
    assert isinstance(arguments["x"], tf.data.Dataset)
    assert arguments["x"].cardinality() == tf.data.INFINITE_CARDINALITY
    assert arguments["steps_per_epoch"] == 2  # 8 training samples in batches of 4
    assert arguments["y"] is None and arguments["validation_split"] == 0.0
    val_x, val_y = arguments["validation_data"][:2]
    np.testing.assert_array_equal(val_x, x[8:])  # Keras's split: the last 20 %
    assert arguments["validation_batch_size"] == 4


@pytest.mark.parametrize("sam", ["default", None], ids=["sam", "plain"])
def test_steps_per_execution_that_does_not_divide_an_epoch_keeps_its_steps(sam):
    # On a repeated pipeline Keras runs whole executions: 6 batches an
    # epoch with steps_per_execution=4 took 8 steps an epoch, from the next
    # epoch's batches. Such a fit gets the arrays; one that divides them
    # the repeated pipeline.
    x, y = _data(12)
    model = _model(1, sam)
    plain = keras.Model(model.inputs, model.outputs)  # Keras's own fit on the arrays
    for m in (model, plain):
        m.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", steps_per_execution=4)
        m.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
    # 12 in recent Keras (14 in Keras 3.4, which also runs a whole last execution).
    assert int(model.optimizer.iterations.numpy()) == int(plain.optimizer.iterations.numpy()) <= 14
    fit = keras.Model.fit.__get__(model)
    bound = inspect.signature(fit).bind(x=x, y=y, batch_size=2, epochs=2)
    bound.apply_defaults()
    assert _array_input.one_iterator_fit_arguments(dict(bound.arguments), 4) is None
    assert _array_input.one_iterator_fit_arguments(dict(bound.arguments), 3)["steps_per_epoch"] == 6


def test_seeded_epochs_repeat_the_first_order_as_keras_does():
    ids = np.arange(10, dtype="float32")[:, None]
    keras.utils.set_random_seed(4)
    arguments = _arguments(x=ids, y=ids, batch_size=4, epochs=4)
    orders = _ids_per_epoch(arguments, 3)
    assert sorted(orders[0]) == list(range(10)) and orders[0] != tuple(range(10))
    assert orders[1] == orders[0] and orders[2] == orders[0]


def test_unseeded_epochs_draw_new_orders():
    ids = np.arange(10, dtype="float32")[:, None]
    model = _model(0, sam=None)
    tf.random.set_seed(None)
    try:
        arguments = _arguments(model, x=ids, y=ids, batch_size=4, epochs=4)
        orders = _ids_per_epoch(arguments, 4)
    finally:
        keras.utils.set_random_seed(0)
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert len(set(orders)) > 1


@pytest.mark.parametrize(
    "change",
    [
        dict(steps_per_epoch=2),
        dict(class_weight={0: 1.0}),
        dict(shuffle="batch"),
        dict(epochs=1),
        dict(epochs=5, initial_epoch=4),
    ],
    ids=["steps_per_epoch", "class_weight", "shuffle_batch", "one_epoch", "one_epoch_left"],
)
def test_what_keras_fit_gets_as_it_is(change):
    x, y = _data()
    assert _arguments(x=x, y=y, batch_size=4, **change) is None


def test_arrays_over_the_cache_limit_go_to_keras_fit_as_they_are(monkeypatch):
    x, y = _data()  # 10 x 2 + 10 x 1 float32: 120 bytes
    monkeypatch.setattr(_array_input, "MAX_CACHED_BYTES", 119)
    assert _arguments(x=x, y=y, batch_size=4) is None
    monkeypatch.setattr(_array_input, "MAX_CACHED_BYTES", 120)
    assert _arguments(x=x, y=y, batch_size=4) is not None


def test_a_dataset_goes_to_keras_fit_as_it_is():
    x, y = _data()
    assert _arguments(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(4)) is None


def test_positional_arguments_and_keras_errors_still_work():
    x, y = _data()
    model = _model(0)
    history = model.fit(x, y, 5, 3, 0)  # batch_size, epochs, verbose
    assert len(history.history["loss"]) == 3
    with pytest.raises(TypeError, match="unexpected keyword|got an unexpected"):
        model.fit(x, y, epoch=3, verbose=0)


def test_sample_weight_as_a_list_trains_as_the_array_does():
    # `keras.Model.fit` fails on a plain list of per-sample weights
    # (IndexError in its cardinality check); the hybrid models take it.
    x, y = _data()
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    from_list = _model(2)
    _fit(from_list, 3, x=x, y=y, sample_weight=[float(w) for w in weights], epochs=2)
    from_array = _model(2)
    _fit(from_array, 3, x=x, y=y, sample_weight=weights, epochs=2)
    for a, b in zip(from_list.get_weights(), from_array.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_arrays_of_another_rank_get_a_new_step():
    # Keras would retrace its step with the ranks relaxed to unknown and
    # fail in its own loss; the hybrid models build a new step instead.
    x, y = _data()
    model = _model(0)
    model.fit(x, y[:, 0], epochs=1, verbose=0)
    first = model.train_function
    model.fit(x, y[:, 0], epochs=1, verbose=0)
    assert model.train_function is first   # same ranks: the traced step is kept
    history = model.fit(x, y, epochs=2, verbose=0)
    assert model.train_function is not first and np.isfinite(history.history["loss"][-1])
    assert _array_input.array_ranks({"x": x, "y": y}) == (2, 2, None)
    # Validation data of their own ranks leave the training step as it is.
    trained = model.train_function
    model.fit(x, y, validation_data=(x, y[:, 0]), epochs=2, verbose=0)
    assert model.train_function is trained
    tested = model.test_function
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0)
    assert model.train_function is trained and model.test_function is not tested
    assert _array_input.array_ranks({"x": tf.data.Dataset.from_tensor_slices(x)}) is None
