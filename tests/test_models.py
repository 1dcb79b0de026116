"""The SAM train_step, checked against hand-computed NumPy steps."""

import numpy as np
import pytest

import keras
from keras_hybrid import SAM, HybridModel, PhysicalConstant, SAMModel, SAMTrainStep, ScientificLayer

RHO, LR, L2 = 0.3, 0.1, 0.01


def _linear_data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def _linear_model(sam, regularize=False, model_cls="hybrid"):
    kernel = np.array([[0.5], [-0.3], [0.2]], "float32")
    dense = keras.layers.Dense(
        1,
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(0.1),
        kernel_regularizer=keras.regularizers.L2(L2) if regularize else None,
    )
    inputs = keras.Input((3,))
    if model_cls == "hybrid":
        return HybridModel(inputs, dense(inputs), sam=sam)
    return SAMModel(keras.Model(inputs, dense(inputs)), sam=sam)


def _loss_and_grads(w, b, x, y, s, regularize):
    r = x @ w + b - y  # (n, 1)
    n = len(x)
    loss = np.sum(s[:, None] * r**2) / n
    gw = 2 * x.T @ (s[:, None] * r) / n
    gb = np.array([2 * np.sum(s[:, None] * r) / n])
    if regularize:
        loss += L2 * np.sum(w**2)
        gw = gw + 2 * L2 * w
    return loss, gw, gb


def _hand_sam_step(x, y, s, regularize, adaptive=False, eta=0.01):
    w = np.array([[0.5], [-0.3], [0.2]], "float64")
    b = np.array([0.1])
    loss, gw, gb = _loss_and_grads(w, b, x, y, s, regularize)
    tw, tb = (np.abs(w) + eta, np.abs(b) + eta) if adaptive else (1.0, 1.0)
    norm = np.sqrt(np.sum((tw * gw) ** 2) + np.sum((tb * gb) ** 2))
    ew, eb = RHO * tw**2 * gw / norm, RHO * tb**2 * gb / norm
    _, gw2, gb2 = _loss_and_grads(w + ew, b + eb, x, y, s, regularize)
    return loss, w - LR * gw2, b - LR * gb2


@pytest.mark.parametrize("model_cls", ["hybrid", "wrapper"])
@pytest.mark.parametrize("regularize", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_equals_hand_computed_sam(model_cls, regularize, weighted, adaptive):
    x, y = _linear_data()
    s = np.linspace(0.5, 2.0, len(x)).astype("float32") if weighted else np.ones(len(x), "float32")
    model = _linear_model(SAM(rho=RHO, adaptive=adaptive), regularize, model_cls)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", metrics=["mae"])
    history = model.fit(
        x, y, sample_weight=s if weighted else None, batch_size=len(x), epochs=1, verbose=0, shuffle=False
    )
    loss, w_new, b_new = _hand_sam_step(x.astype("float64"), y, s, regularize, adaptive)
    kernel, bias = [v.numpy() for v in model.trainable_variables]
    np.testing.assert_allclose(kernel, w_new, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, b_new, rtol=1e-5, atol=1e-6)
    # The reported loss is the real loss at the unperturbed weights.
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-5)
    w0 = np.array([[0.5], [-0.3], [0.2]])
    # `metrics=` are unweighted in Keras (only `weighted_metrics=` use s).
    mae = np.mean(np.abs(x @ w0 + 0.1 - y))
    np.testing.assert_allclose(history.history["mae"][0], mae, rtol=1e-5)


def test_lookahead_sam_matches_hand_computed_steps():
    # every=2: step 1 is a full SAM step and stores v, the part of the SAM
    # gradient orthogonal to the plain one; step 2 uses g + alpha |g|/|v| v.
    x, y = _linear_data()
    s = np.ones(len(x))
    model = _linear_model(SAM(rho=RHO, every=2, alpha=0.7))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=2, verbose=0, shuffle=False)

    w, b = np.array([[0.5], [-0.3], [0.2]]), np.array([0.1])
    x64 = x.astype("float64")
    _, gw, gb = _loss_and_grads(w, b, x64, y, s, False)
    norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
    _, sw, sb = _loss_and_grads(w + RHO * gw / norm, b + RHO * gb / norm, x64, y, s, False)
    coeff = (np.sum(gw * sw) + np.sum(gb * sb)) / (np.sum(gw**2) + np.sum(gb**2))
    vw, vb = sw - coeff * gw, sb - coeff * gb
    w, b = w - LR * sw, b - LR * sb
    _, gw, gb = _loss_and_grads(w, b, x64, y, s, False)
    ratio = np.sqrt(np.sum(gw**2) + np.sum(gb**2)) / np.sqrt(np.sum(vw**2) + np.sum(vb**2))
    w, b = w - LR * (gw + 0.7 * ratio * vw), b - LR * (gb + 0.7 * ratio * vb)
    kernel, bias = [v.numpy() for v in model.trainable_variables]
    np.testing.assert_allclose(kernel, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, b, rtol=1e-5, atol=1e-6)


def _two_step_weights(model, x, y):
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    return [v.numpy() for v in model.weights]


@pytest.mark.parametrize("sam", [SAM(rho=0.0), SAM(rho=0.5, perturb="physical"), None])
def test_plain_radius_gives_exactly_the_keras_step(sam):
    x, y = _linear_data()
    keras.utils.set_random_seed(1)
    plain = _linear_model(None)
    plain = keras.Model(plain.inputs, plain.outputs)  # a genuine keras.Model
    keras.utils.set_random_seed(1)
    hybrid = _linear_model(sam)  # no physical constants: nothing perturbed
    for a, b in zip(_two_step_weights(plain, x, y), _two_step_weights(hybrid, x, y)):
        np.testing.assert_array_equal(a, b)


def test_weights_are_restored_exactly_after_the_perturbed_pass():
    # With a zero learning rate a SAM step must leave every bit unchanged.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 2)).astype("float32")
    net = keras.Sequential([keras.Input((5,)), keras.layers.Dense(32, "tanh"), keras.layers.Dense(2)])
    model = SAMModel(net, sam=SAM(rho=1.0))
    before = [v.numpy().copy() for v in model.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


class _WithUnusedWeight(keras.layers.Layer):
    def build(self, input_shape):
        self.used = self.add_weight(shape=(input_shape[-1], 1), initializer="ones")
        self.unused = self.add_weight(shape=(4,), initializer="ones")

    def call(self, x):
        return keras.ops.matmul(x, self.used)


def test_unused_variable_is_skipped():
    x, y = _linear_data()
    inputs = keras.Input((3,))
    model = HybridModel(inputs, _WithUnusedWeight()(inputs), sam=SAM(rho=0.1))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=2, verbose=0)
    layer = model.layers[-1]
    np.testing.assert_array_equal(layer.unused.numpy(), np.ones(4))
    assert not np.allclose(layer.used.numpy(), 1.0)


def test_zero_gradient_gives_no_nan():
    # g = 0 exactly: e = rho g / (|g| + eps) must be 0, not 0/0. Without eps
    # the perturbed pass would be NaN: every step would fall back (or, before
    # the fallback, be skipped).
    x = np.ones((4, 3), "float32")
    inputs = keras.Input((3,))
    out = keras.layers.Dense(1, kernel_initializer="zeros")(inputs)
    model = HybridModel(inputs, out, sam=SAM(rho=0.5))
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, np.zeros((4, 1), "float32"), epochs=3, verbose=0)
    assert history.history["sam_fallbacks"] == [0, 0, 0]
    assert history.history["skipped_steps"] == [0, 0, 0]
    assert int(model.optimizer.iterations.numpy()) == 3
    for v in model.weights:
        np.testing.assert_array_equal(v.numpy(), 0.0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_non_finite_gradient_does_not_poison_weights(jit_compile):
    x, y = _linear_data()
    y_bad = y.copy()
    y_bad[3, 0] = np.nan
    model = _linear_model(SAM(rho=0.1))
    before = [v.numpy().copy() for v in model.weights]
    model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
    history = model.fit(x, y_bad, batch_size=len(x), epochs=2, verbose=0)
    assert np.isnan(history.history["loss"][0])  # reported, not hidden
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())
    # Training then continues normally on clean data.
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)
    assert not np.array_equal(before[0], model.weights[0].numpy())


def test_eager_graph_and_xla_steps_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    results = {}
    for mode, options in (("eager", {"run_eagerly": True}), ("graph", {"jit_compile": False}),
                          ("xla", {"jit_compile": True})):
        keras.utils.set_random_seed(3)
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, "tanh"), keras.layers.Dense(1)])
        model = SAMModel(net, sam=SAM(rho=0.2, adaptive=True))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", **options)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        results[mode] = [v.numpy() for v in model.weights]
    for mode in ("graph", "xla"):
        for a, b in zip(results["eager"], results[mode]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The steps moved the weights (the comparison is not between initial values).
    keras.utils.set_random_seed(3)
    init = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, "tanh"), keras.layers.Dense(1)])
    assert np.max(np.abs(init.weights[0].numpy() - results["eager"][0])) > 1e-3


def test_mixed_precision_step_matches_float32():
    x, y = _linear_data()
    model32 = _linear_model(SAM(rho=RHO))
    model32.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model32.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    keras.config.set_dtype_policy("mixed_float16")
    model16 = _linear_model(SAM(rho=RHO))
    model16.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    assert isinstance(model16.optimizer, keras.optimizers.LossScaleOptimizer)
    model16.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    for a, b in zip(model32.trainable_variables, model16.trainable_variables):
        assert b.dtype == "float32"
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-2, atol=2e-3)


def _mixed_precision_pair(build, fit):
    # The float16 model's loss scale starts at 128, low enough that no
    # step overflows (and is skipped by the LossScaleOptimizer): both
    # models take the same steps.
    keras.utils.set_random_seed(0)
    model32 = build(lambda opt: opt)
    fit(model32)
    keras.config.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    model16 = build(lambda opt: keras.optimizers.LossScaleOptimizer(opt, initial_scale=128.0))
    fit(model16)
    keras.config.set_dtype_policy("float32")
    return model32, model16


def test_mixed_precision_looksam_matches_float32():
    x, y = _linear_data()

    def build(wrap):
        model = _linear_model(SAM(rho=RHO, every=2))
        model.compile(optimizer=wrap(keras.optimizers.SGD(LR)), loss="mse")
        return model

    def fit(model):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)  # full, reuse, ...

    model32, model16 = _mixed_precision_pair(build, fit)
    assert int(model16.optimizer.iterations.numpy()) == 4
    moved = np.max(np.abs(model32.weights[0].numpy() - np.array([[0.5], [-0.3], [0.2]])))
    assert moved > 0.05
    for a, b in zip(model32.trainable_variables, model16.trainable_variables):
        assert b.dtype == "float32"
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-2, atol=2e-3)


def test_mixed_precision_ode_hybrid_matches_float32():
    from keras_hybrid.systems import pendulum

    times, y0, observed = pendulum.simulate(n_trajectories=8, n_steps=6, seed=0)

    def build(wrap):
        model = pendulum.build_model(times, sam=SAM(rho=0.3), hidden=8)
        model.compile(optimizer=wrap(keras.optimizers.SGD(0.5)), loss="mse")
        return model

    def fit(model):
        model.fit(y0, observed, batch_size=4, epochs=2, verbose=0, shuffle=False)

    model32, model16 = _mixed_precision_pair(build, fit)
    assert int(model16.optimizer.iterations.numpy()) == 4
    assert model16.layers[-1].dtype_policy.name == "mixed_float16"
    w0_32, w0_16 = model32.physical_constants()["w0"], model16.physical_constants()["w0"]
    assert abs(w0_32 - 0.5) > 1e-3  # the constant was trained
    np.testing.assert_allclose(w0_16 - 0.5, w0_32 - 0.5, rtol=2e-2)
    for a, b in zip(model32.trainable_variables, model16.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-2, atol=2e-3)


def test_batchnorm_state_updated_once_per_step_by_unperturbed_pass():
    # A Dense layer before the BatchNorm: the perturbed pass feeds it a
    # different input, so statistics updated there would show.
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(16, 2)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    kernel = np.array([[0.5, -1.0, 0.3], [0.2, 0.4, -0.6]], "float32")
    results = []
    for sam in (None, SAM(rho=0.5)):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([
            keras.Input((2,)),
            keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(kernel)),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Dense(1),
        ])
        model = SAMModel(net, sam=sam)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        results.append(net.layers[1].moving_mean.numpy())
    # One update with momentum 0.5 from 0: 0.5 * batch mean of the Dense
    # output at the unperturbed weights, as in plain training.
    np.testing.assert_allclose(results[0], 0.5 * (x @ kernel).mean(0), rtol=1e-5)
    np.testing.assert_array_equal(results[0], results[1])


def test_constraint_holds_in_perturbed_pass():
    # log of the constant: a non-positive value in the perturbed pass would
    # give NaN gradients and a skipped step.
    def log_k(x, c):
        return keras.ops.log(c["k"]) + 0.0 * x

    x = np.ones((8, 1), "float32")
    y = np.full((8, 1), 5.0, "float32")
    inputs = keras.Input((1,))
    layer = ScientificLayer(log_k, [PhysicalConstant("k", 0.01, constraint="positive")])
    model = HybridModel(inputs, layer(inputs), sam=SAM(rho=50.0, perturb="physical"))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, epochs=3, verbose=0)
    k = model.physical_constants()["k"]
    assert np.isfinite(k) and k > 0.01  # moved, toward exp(5)


def test_perturb_neural_ignores_the_constant_gradient():
    # A model without a network: perturb="neural" leaves nothing to perturb
    # (a plain step), perturb="physical" takes the gradient at a + e with
    # e = rho * g / |g| = -0.5.
    def scale(x, c):
        return c["a"] * x

    x = np.linspace(-1, 1, 16).astype("float32")[:, None]
    y = 3.0 * x
    for perturb, expect_change in (("neural", False), ("physical", True)):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((1,))
        model = HybridModel(inputs, ScientificLayer(scale, [PhysicalConstant("a", 1.0)])(inputs),
                            sam=SAM(rho=0.5, perturb=perturb))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        a = model.physical_constants()["a"]
        # dL/da = 2 mean(x^2) (a - 3); SAM evaluates it at a = 1 - 0.5.
        m2 = float(np.mean(x**2))
        plain = 1.0 - 0.1 * 2 * m2 * (1.0 - 3.0)
        sam = 1.0 - 0.1 * 2 * m2 * (1.0 + 0.5 * -1 - 3.0)
        np.testing.assert_allclose(a, sam if expect_change else plain, rtol=1e-5)


@pytest.mark.parametrize("model_cls", ["hybrid", "wrapper"])
def test_keras_file_round_trip_keeps_sam_and_predictions(tmp_path, model_cls):
    x, y = _linear_data()
    sam = SAM(rho=0.2, perturb="neural", rho_physical=0.01, adaptive=True, eta=0.2, synchronized=False,
              every=3, alpha=0.5)
    model = _linear_model(sam, model_cls=model_cls)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.sam == sam
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    restored = type(model).from_config(model.get_config())
    assert restored.sam == sam


def test_sam_none_round_trips(tmp_path):
    model = _linear_model(None)
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").sam is None


def test_subclassed_model_with_sam_mixin():
    class Net(SAMTrainStep, keras.Model):
        def __init__(self, sam, **kwargs):
            super().__init__(**kwargs)
            self.sam = sam
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    x, y = _linear_data()
    model = Net(sam=SAM(rho=RHO))
    model(x)
    model.dense.kernel.assign([[0.5], [-0.3], [0.2]])
    model.dense.bias.assign([0.1])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    _, w_new, b_new = _hand_sam_step(x.astype("float64"), y, np.ones(len(x)), False)
    np.testing.assert_allclose(model.dense.kernel.numpy(), w_new, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.dense.bias.numpy(), b_new, rtol=1e-5, atol=1e-6)


def test_bad_sam_argument():
    with pytest.raises(TypeError, match="sam=0.1"):
        SAMModel(keras.Sequential([keras.layers.Dense(1)]), sam=0.1)


@pytest.mark.parametrize("perturb", ["neural", "all"])
def test_excluded_layer_is_not_perturbed(perturb):
    # y_hat = w2 * w1 * x, with w1 excluded: only w2 moves, by
    # e2 = rho * sign(g2), and the step uses the gradient at (w1, w2 + e2).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1)).astype("float32")
    y = 2.0 * x
    inputs = keras.Input((1,))
    first = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(0.5), name="first")
    second = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(1.5), name="second")
    rho, lr = 0.2, 0.1
    model = HybridModel(inputs, second(first(inputs)), sam=SAM(rho=rho, perturb=perturb, exclude=("first",)))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)

    xs, ys = x[:, 0].astype("float64"), y[:, 0].astype("float64")

    def grads(w1, w2):
        r = w2 * w1 * xs - ys
        return np.mean(2 * r * w2 * xs), np.mean(2 * r * w1 * xs)

    w1, w2 = 0.5, 1.5
    _, g2 = grads(w1, w2)
    g1p, g2p = grads(w1, w2 + rho * np.sign(g2))
    np.testing.assert_allclose(float(first.kernel.numpy()[0, 0]), w1 - lr * g1p, rtol=1e-5)
    np.testing.assert_allclose(float(second.kernel.numpy()[0, 0]), w2 - lr * g2p, rtol=1e-5)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_a_nested_model_named_in_exclude_stays_excluded_after_loading(kind, tmp_path):
    # The encoder is a nested model: its variables' paths carry its name
    # when built in its own scope (a Sequential), not when loaded from a
    # .keras file or built as a functional model, which then were either
    # perturbed or refused ("match no part of any variable's path").
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1)).astype("float32")
    y = 2.0 * x
    kernel = keras.initializers.Constant(0.5)
    if kind == "sequential":
        encoder = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False,
                                                                          kernel_initializer=kernel)],
                                   name="encoder")
    else:
        enc_in = keras.Input((1,))
        encoder = keras.Model(enc_in, keras.layers.Dense(1, use_bias=False, kernel_initializer=kernel)(enc_in),
                              name="encoder")
    inputs = keras.Input((1,))
    second = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(1.5),
                                name="second")
    rho, lr = 0.2, 0.1
    model = HybridModel(inputs, second(encoder(inputs)), sam=SAM(rho=rho, exclude=("encoder",)))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    xs, ys = x[:, 0].astype("float64"), y[:, 0].astype("float64")

    def grads(w1, w2):
        r = w2 * w1 * xs - ys
        return np.mean(2 * r * w2 * xs), np.mean(2 * r * w1 * xs)

    _, g2 = grads(0.5, 1.5)
    g1p, g2p = grads(0.5, 1.5 + rho * np.sign(g2))  # only the second layer perturbed
    for trained in (model, loaded):
        trained.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        first_kernel, second_kernel = [float(np.ravel(w)[0]) for w in trained.get_weights()]
        np.testing.assert_allclose([first_kernel, second_kernel], [0.5 - lr * g1p, 1.5 - lr * g2p],
                                   rtol=1e-5)


def test_adaptive_sam_scales_a_constant_by_its_physical_value():
    # y = c * x0 + Dense(x), c = s * exp(raw); one adaptive SAM step over all
    # parameters (one norm), by hand: T_raw = (c + eta * s) / c for the
    # constant, |w| + eta for the kernel and bias.
    x, y = _linear_data()
    c0, s, eta = 2.0, 0.5, 0.05
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(
        1,
        kernel_initializer=keras.initializers.Constant(np.array([[0.5], [-0.3], [0.2]], "float32")),
        bias_initializer=keras.initializers.Constant(0.1),
    )
    physics = ScientificLayer(
        lambda x, k: k["c"] * x[:, :1], [PhysicalConstant("c", c0, constraint="positive", scale=s)], name="law"
    )
    outputs = keras.layers.Add()([physics(inputs), dense(inputs)])
    model = HybridModel(inputs, outputs, sam=SAM(rho=RHO, perturb="all", adaptive=True, eta=eta))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)

    x64, y64 = x.astype("float64"), y.astype("float64")

    def grads(r, w, b):
        c = s * np.exp(r)
        res = c * x64[:, :1] + x64 @ w + b - y64
        n = len(x64)
        dc = 2 * np.sum(res * x64[:, :1]) / n
        return dc * c, 2 * x64.T @ res / n, np.array([2 * np.sum(res) / n])

    r = np.log(c0 / s)
    w, b = np.array([[0.5], [-0.3], [0.2]]), np.array([0.1])
    gr, gw, gb = grads(r, w, b)
    tr, tw, tb = (c0 + eta * s) / c0, np.abs(w) + eta, np.abs(b) + eta
    norm = np.sqrt((tr * gr) ** 2 + np.sum((tw * gw) ** 2) + np.sum((tb * gb) ** 2))
    gr2, gw2, gb2 = grads(r + RHO * tr**2 * gr / norm, w + RHO * tw**2 * gw / norm, b + RHO * tb**2 * gb / norm)
    np.testing.assert_allclose(float(model.get_layer("law").physical_constants()["c"]), s * np.exp(r - LR * gr2), rtol=1e-5)
    kernel = [v.numpy() for v in model.trainable_variables if len(v.shape) == 2][0]
    np.testing.assert_allclose(kernel, w - LR * gw2, rtol=1e-5, atol=1e-6)
