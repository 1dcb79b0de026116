"""`kh.repeated_dataset`: the same epochs as arrays, one iterator per `fit`."""

import keras
import numpy as np
import pytest

import keras_hybrid as kh


def _epochs(dataset, steps, epochs, part=0):
    """The sample ids seen in each of `epochs` epochs (`part`: which element
    of the batches holds them)."""
    iterator = iter(dataset)
    return [
        np.concatenate([np.asarray(next(iterator)[part]).ravel() for _ in range(steps)])
        for _ in range(epochs)
    ]


def test_every_epoch_visits_each_sample_once_in_a_new_order():
    ids = np.arange(10, dtype="float32")
    dataset, steps = kh.repeated_dataset(ids, ids, batch_size=4)
    assert steps == 3  # 4 + 4 + 2
    epochs = _epochs(dataset, steps, 4)
    for seen in epochs:
        np.testing.assert_array_equal(np.sort(seen), ids)
    assert len({tuple(seen) for seen in epochs}) > 1


def test_without_shuffle_the_order_is_the_arrays_order():
    ids = np.arange(7, dtype="float32")
    dataset, steps = kh.repeated_dataset(ids, 2 * ids, batch_size=3, shuffle=False)
    assert steps == 3
    for seen in _epochs(dataset, steps, 2, part=1):
        np.testing.assert_array_equal(seen, 2 * ids)


def test_the_same_seed_gives_the_same_orders():
    ids = np.arange(12, dtype="float32")
    first = _epochs(kh.repeated_dataset(ids, ids, batch_size=5, seed=3)[0], 3, 3)
    second = _epochs(kh.repeated_dataset(ids, ids, batch_size=5, seed=3)[0], 3, 3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def _model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((1,))
    outputs = keras.layers.Dense(1)(keras.layers.Dense(8, activation="tanh")(inputs))
    model = kh.HybridModel(inputs, outputs, sam=kh.SAM(rho=0.05))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def test_fit_matches_fit_on_the_arrays_without_shuffling():
    # float64 data, cast to float32 as `fit` does for arrays; a partial last batch.
    x = np.linspace(0.0, 1.0, 10)[:, None]
    y = np.sin(3.0 * x)
    weights = np.linspace(0.5, 1.5, 10)
    on_arrays = _model(0)
    on_arrays.fit(x, y, sample_weight=weights, batch_size=4, epochs=5, shuffle=False, verbose=0)
    on_dataset = _model(0)
    dataset, steps = kh.repeated_dataset(x, y, batch_size=4, shuffle=False, sample_weight=weights)
    on_dataset.fit(dataset, steps_per_epoch=steps, epochs=5, verbose=0)
    for a, b in zip(on_arrays.get_weights(), on_dataset.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Not a fit that left the weights where they started.
    assert not np.allclose(_model(0).get_weights()[0], on_dataset.get_weights()[0])


def test_structured_inputs():
    x = {"a": np.zeros((6, 2)), "b": [np.ones((6, 1)), np.ones((6, 3))]}
    dataset, steps = kh.repeated_dataset(x, np.zeros(6), batch_size=6, shuffle=False)
    batch_x, batch_y = next(iter(dataset))
    assert steps == 1
    assert batch_x["a"].shape == (6, 2) and batch_x["a"].dtype == "float32"
    assert isinstance(batch_x["b"], tuple) and batch_x["b"][1].shape == (6, 3)
    assert batch_y.shape == (6,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=2.5), "batch_size=2.5"),
        (dict(shuffle="yes"), "shuffle='yes'"),
        (dict(y=np.zeros(4)), "y: [4]"),
        (dict(y=None, sample_weight=np.ones(5)), "y=None"),
        (dict(x=None), "x=None"),
        (dict(seed="abc"), "seed='abc'"),
        (dict(seed=1.5), "seed=1.5"),
        (dict(seed=True), "seed=True"),
        (dict(seed=2**70), "seed=1180591620717411303424"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = dict(x=np.zeros((5, 1)), y=np.zeros(5))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        kh.repeated_dataset(**arguments)


def test_non_finite_samples_are_reported():
    x = np.zeros((5, 2))
    x[3, 1] = np.nan
    with pytest.warns(UserWarning, match=r"`x` contains 1 non-finite value.*\[3, 1\]"):
        kh.repeated_dataset(x, np.zeros(5))


def test_lists_of_numbers_are_one_array():
    # One target and one weight per sample, given as plain lists.
    dataset, _ = kh.repeated_dataset(np.zeros((4, 1)), [0.0, 1.0, 2.0, 3.0], batch_size=4,
                                     shuffle=False, sample_weight=[1.0, 1.0, 0.5, 0.5])
    _, batch_y, batch_w = next(iter(dataset))
    np.testing.assert_array_equal(batch_y.numpy(), [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(batch_w.numpy(), [1.0, 1.0, 0.5, 0.5])


def test_non_finite_entries_of_a_dict_are_named_by_key():
    x = {"a": np.zeros((5, 1)), "b": np.zeros((5, 1))}
    x["b"][4, 0] = np.nan
    with pytest.warns(UserWarning, match=r"`x\['b'\]` contains 1 non-finite .*x\['b'\]\[4, 0\]=nan"):
        kh.repeated_dataset(x, np.zeros(5))
