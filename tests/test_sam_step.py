"""The SAM step's settings and inputs: read-only `SAM`, settings changed
between fits, fresh random numbers in the perturbed pass, `exclude` names,
the older `compute_loss` signature, saved files with a wrong `sam` entry,
and the user's `jit_compile` left as it was."""

import json
import warnings
import zipfile

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh

LR = 0.1
W, B = np.array([[0.5], [-0.3], [0.2]]), np.array([0.1])


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")


def _linear(sam, weights=(W, B)):
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(weights[0]),
                               bias_initializer=keras.initializers.Constant(weights[1]))
    model = kh.HybridModel(inputs, dense(inputs), sam=sam)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model


def _hand_step(w, b, x, y, rho, scale=1.0, lr=LR):
    """One SGD step on `scale * mse` with SAM of radius `rho` (0: plain)."""
    def grads(w, b):
        r = x @ w + b - y
        return scale * 2 * x.T @ r / len(x), scale * np.array([2 * r.sum() / len(x)])

    gw, gb = grads(w, b)
    norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
    gw2, gb2 = grads(w + rho * gw / norm, b + rho * gb / norm)
    return w - lr * gw2, b - lr * gb2


def test_sam_settings_are_read_only_and_point_to_assignment():
    sam = kh.SAM(rho=0.3)
    with pytest.raises(AttributeError, match=r"read-only.*`model\.sam = SAM\(\.\.\., rho=-1\.0\)`"):
        sam.rho = -1.0
    assert sam.rho == 0.3


def test_a_radius_schedule_from_a_callback_takes_effect_at_the_next_step():
    # Assigning `model.sam` in a callback left `fit` without a train
    # function ("'NoneType' object is not callable" at the next epoch).
    class Warmup(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.sam = kh.SAM(rho=0.1 * epoch, perturb="all")

    x, y = _data()
    x64, y64 = x.astype("float64"), y.astype("float64")
    model = _linear(None)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=[Warmup()])
    w, b = W, B
    for rho in (0.0, 0.1, 0.2):
        w, b = _hand_step(w, b, x64, y64, rho=rho)
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-5)
    np.testing.assert_allclose(model.get_weights()[1], b, rtol=1e-5)

    # Switching to LookSAM mid-fit builds its state for the new step.
    class ToLookSAM(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.sam = kh.SAM(rho=0.1, perturb="all", every=2)

    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[ToLookSAM()])
    assert np.all(np.isfinite(model.get_weights()[0]))


def test_new_sam_settings_after_a_fit_take_effect_and_are_validated():
    x, y = _data()
    x64, y64 = x.astype("float64"), y.astype("float64")
    model = _linear(kh.SAM(rho=0.3, perturb="all"))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    w, b = _hand_step(W, B, x64, y64, rho=0.3)
    model.sam = kh.SAM(rho=0.05, perturb="all")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    w, b = _hand_step(w, b, x64, y64, rho=0.05)
    np.testing.assert_allclose(model.weights[0].numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.weights[1].numpy(), b, rtol=1e-5, atol=1e-6)
    model.sam = None  # plain steps from now on
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    w, b = _hand_step(w, b, x64, y64, rho=0.0)
    np.testing.assert_allclose(model.weights[0].numpy(), w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"`rho` must be >= 0 and finite. Received: rho=-1"):
        model.sam = {"rho": -1}
    assert model.sam is None


@pytest.mark.parametrize("kwargs", [{"adaptive": "no"}, {"synchronized": 1}])
def test_bool_settings_must_be_bools(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(TypeError, match=rf"`{name}` must be True or False. Received: {name}={value!r}"):
        kh.SAM(**kwargs)


def test_exclude_name_matching_nothing_fails_at_the_first_fit():
    x, y = _data()
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="encoder")(inputs)
    model = kh.HybridModel(inputs, keras.layers.Dense(1, name="head")(hidden),
                           sam=kh.SAM(exclude=("encodr",)))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"`exclude` names \['encodr'\] match no layer.*"
                       r"\['encoder', 'head'\]. Received: exclude=\['encodr'\]"):
        model.fit(x, y, verbose=0)
    model.sam = kh.SAM(exclude=("encoder",))
    model.fit(x, y, verbose=0)  # a matching name trains


class _RecordingDropout(keras.layers.Layer):
    """Multiplies by a dropout mask and records each mask drawn (eager)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dropout = keras.layers.Dropout(0.5, seed=3)
        self.masks = []

    def call(self, x, training=None):
        mask = self.dropout(keras.ops.ones_like(x), training=training)
        if tf.executing_eagerly():
            self.masks.append(keras.ops.convert_to_numpy(mask) != 0)
        return x * mask

    def compute_output_shape(self, input_shape):
        return input_shape


def test_perturbed_pass_draws_its_own_dropout_masks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    inputs = keras.Input((32,))
    recorder = _RecordingDropout()
    model = kh.HybridModel(inputs, keras.layers.Dense(1)(recorder(inputs)), sam=kh.SAM(rho=0.1))
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    recorder.masks.clear()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    first_1, second_1, first_2, second_2 = recorder.masks
    # Step 1's perturbed pass must not reuse step 2's first-pass masks, nor
    # its own first pass's masks (512 entries: equal by chance ~ 2^-512).
    assert not np.array_equal(second_1, first_2)
    assert not np.array_equal(second_1, first_1)
    assert not np.array_equal(second_2, first_2)


class OldSignatureLoss(kh.SAMTrainStep, keras.Model):
    """`compute_loss` without `training` (Keras < 3.5 signature), doubled."""

    def __init__(self, sam=None, **kwargs):
        super().__init__(name="old_signature", **kwargs)
        self.sam = sam
        self.dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(W),
                                        bias_initializer=keras.initializers.Constant(B))

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        return 2.0 * super().compute_loss(x, y, y_pred, sample_weight)


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_compute_loss_with_the_older_signature(rho):
    x, y = _data()
    model = OldSignatureLoss(sam=kh.SAM(rho=rho, perturb="all"))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    x64, y64 = x.astype("float64"), y.astype("float64")
    w, b = _hand_step(W, B, x64, y64, rho=rho, scale=2.0)
    np.testing.assert_allclose(model.dense.kernel.numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.dense.bias.numpy(), b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"][0],
                               2 * np.mean((x64 @ W + B - y64) ** 2), rtol=1e-5)


def test_keras_file_whose_sam_entry_is_another_class_fails_at_load(tmp_path):
    x, y = _data()
    path = tmp_path / "model.keras"
    _linear(kh.SAM(rho=0.1)).save(path)
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["sam"] = keras.saving.serialize_keras_object(
                    kh.NonFiniteGuard(mode="warn"))
                data = json.dumps(config).encode()
            target.writestr(item, data)
    with pytest.raises(TypeError, match=r"`sam` must be a `keras_hybrid.SAM` or its config; this "
                       r"config deserializes to a `NonFiniteGuard`"):
        keras.saving.load_model(edited)


def test_jit_fallback_under_a_strategy_keeps_the_users_setting():
    x, y = _data()
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = _linear(kh.SAM(rho=0.3, perturb="all"))
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert sum("keras-team/keras#19005" in str(w.message) for w in caught) == 1
    assert model.jit_compile is True  # the user's setting, untouched
    w, b = _hand_step(W, B, x.astype("float64"), y.astype("float64"), rho=0.3)
    np.testing.assert_allclose(model.weights[0].numpy(), w, rtol=1e-5, atol=1e-6)


_FORWARD_CALLS = []


@keras.saving.register_keras_serializable(package="test_sam_step")
def counted_ohm(current, c):
    _FORWARD_CALLS.append(1)  # run eagerly: once per forward pass
    return c["R"] * current


@pytest.mark.parametrize(
    "sam", [kh.SAM(rho=0.3), kh.SAM(rho=0.3, perturb="all", exclude=["ohm"])],
    ids=["neural_only_without_a_network", "everything_excluded"],
)
def test_a_step_that_perturbs_nothing_runs_one_pass(sam):
    # SAM that perturbs no variable of the model is a plain step: same
    # weights, one forward pass instead of two.
    x, _ = _data()
    x = np.abs(x[:, :1])
    y = 3.0 * x
    weights = []
    for setting in (None, sam):
        inputs = keras.Input((1,))
        layer = kh.ScientificLayer(counted_ohm, [kh.PhysicalConstant("R", 1.0)], name="ohm")
        model = kh.HybridModel(inputs, layer(inputs), sam=setting)
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", run_eagerly=True)
        _FORWARD_CALLS.clear()
        model.fit(x, y, epochs=3, batch_size=8, verbose=0)
        assert len(_FORWARD_CALLS) == 3
        weights.append(model.get_weights())
    np.testing.assert_array_equal(weights[0], weights[1])


def test_a_sparse_gradient_is_perturbed_by_its_dense_norm():
    # An Embedding's gradient has one slice per lookup: index 0 looked up
    # twice gives two slices [1] and [1], whose dense sum is [2, 0, 0].
    sparse = tf.IndexedSlices(tf.ones((2, 1)), tf.constant([0, 0]), tf.constant([3, 1]))
    (e,) = kh.sam_perturbation([sparse], rho=1.0)
    np.testing.assert_allclose(np.ravel(e), [1.0, 0.0, 0.0], atol=1e-6)  # was [1.414, 0, 0]


def _embedding_model(sam, vocabulary=3):
    model = kh.SAMModel(keras.Sequential([
        keras.Input((2,), dtype="int32"),
        keras.layers.Embedding(vocabulary, 1, embeddings_initializer="ones"),
        keras.layers.Flatten(),
        keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", trainable=False),
    ]), sam=sam)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def test_an_embedding_looked_up_twice_takes_the_textbook_sam_step():
    model = _embedding_model(kh.SAM(rho=0.5))
    model.fit(np.array([[0, 0]], "int32"), np.zeros((1, 1), "float32"), batch_size=1, verbose=0)
    # loss (2 E0)^2: g = 8 E0 = 8 at E0 = 1, e = 0.5 along E0, g' = 8 * 1.5 = 12.
    np.testing.assert_allclose(np.ravel(model.trainable_variables[0].numpy()),
                               [1.0 - 0.01 * 12.0, 1.0, 1.0], rtol=1e-6)


def test_looksam_trains_an_embedding_as_the_same_model_with_dense_gradients():
    x = np.random.default_rng(0).integers(0, 5, size=(32, 2)).astype("int32")
    y = np.random.default_rng(1).normal(size=(32, 1)).astype("float32")
    sam = kh.SAM(rho=0.2, every=2, alpha=0.7)
    sparse = _embedding_model(sam, vocabulary=5)
    sparse.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)  # it raised a TypeError
    # One-hot inputs through a Dense layer: the same model, dense gradients.
    inputs = keras.Input((2, 5))
    table = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    hidden = keras.layers.Flatten()(table(inputs))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", trainable=False)(hidden)
    dense = kh.SAMModel(keras.Model(inputs, outputs), sam=sam)
    dense.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    dense.fit(np.eye(5, dtype="float32")[x], y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(sparse.trainable_variables[0].numpy(),
                               dense.trainable_variables[0].numpy(), rtol=1e-5)


LR32 = float(np.float32(LR))  # Keras keeps the learning rate in float32


def _linear64(sam):
    inputs = keras.Input((3,), dtype="float64")
    dense = keras.layers.Dense(1, dtype="float64", kernel_initializer=keras.initializers.Constant(W),
                               bias_initializer=keras.initializers.Constant(B))
    model = kh.HybridModel(inputs, dense(inputs), sam=sam)
    # Keras computes a loss in float32 unless the loss is given its dtype.
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=keras.losses.MeanSquaredError(dtype="float64"))
    return model


def test_a_float64_model_takes_the_sam_step_in_float64():
    # The perturbation was computed in float32: 1e-9 off after one step
    # (1e-12 here is the `eps` of the norm).
    x, y = (a.astype("float64") for a in _data())
    model = _linear64(kh.SAM(rho=0.3, perturb="all"))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    w, b = _hand_step(W, B, x, y, rho=0.3, lr=LR32)
    np.testing.assert_allclose(model.weights[0].numpy(), w, rtol=1e-11)
    np.testing.assert_allclose(model.weights[1].numpy(), b, rtol=1e-11)
    e = kh.sam_perturbation([tf.constant([1.0 + 1e-9, 3.0], "float64")], rho=1.0)[0]
    assert e.dtype == tf.float64
    np.testing.assert_allclose(e.numpy(), np.array([1.0 + 1e-9, 3.0]) / np.hypot(1.0 + 1e-9, 3.0),
                               rtol=1e-11)


def test_looksam_keeps_a_float64_models_direction_in_float64():
    x, y = (a.astype("float64") for a in _data())
    model = _linear64(kh.SAM(rho=0.3, perturb="all", every=2, alpha=0.5))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    # Step 0 is a full SAM step that stores v = g_sam - (g.g_sam / g.g) g;
    # step 1 reuses it: g + alpha |g| / |v| v.
    def grads(w, b, x, y):
        r = x @ w + b - y
        return np.concatenate([2 * x.T @ r / len(x), [2 * r.sum() / len(x)]], axis=None)

    theta = np.concatenate([W, B], axis=None)
    (x0, x1), (y0, y1) = np.split(x, 2), np.split(y, 2)
    g = grads(theta[:3, None], theta[3:], x0, y0)
    ahead = theta + 0.3 * g / np.linalg.norm(g)
    gs = grads(ahead[:3, None], ahead[3:], x0, y0)
    v = gs - g @ gs / (g @ g + 1e-12) * g
    theta = theta - LR32 * gs
    g = grads(theta[:3, None], theta[3:], x1, y1)
    theta = theta - LR32 * (g + 0.5 * np.linalg.norm(g) / (np.linalg.norm(v) + 1e-12) * v)
    got = np.concatenate([model.weights[0].numpy(), model.weights[1].numpy()], axis=None)
    np.testing.assert_allclose(got, theta, rtol=1e-12)
