"""ScientificLayer and ODELayer: constants, per-sample constants, models."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh
from keras_hybrid import SAM, HybridModel, ODELayer, PhysicalConstant, ScientificLayer


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def ohm(current, constants):
    return constants["R"] * current


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def decay(t, y, constants):
    return -constants["k"] * y


def _resistor(value=10.0, **kwargs):
    return ScientificLayer(ohm, [PhysicalConstant("R", value, unit="ohm", constraint="positive")], **kwargs)


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


def test_hybrid_recovers_constant_within_one_percent():
    # V = R I + g(T): the network sees only the temperature T and learns the
    # unmodelled g; R (true 4.7, initial 1.0) is recovered by SAM training.
    rng = np.random.default_rng(1)
    current = rng.uniform(0.1, 2.0, (1024, 1)).astype("float32")
    temperature = rng.uniform(-1.0, 1.0, (1024, 1)).astype("float32")
    voltage = 4.7 * current + 0.5 * np.sin(2.0 * temperature) + 0.01 * rng.standard_normal((1024, 1))
    i_in, t_in = keras.Input((1,)), keras.Input((1,))
    net = keras.layers.Dense(1)(keras.layers.Dense(16, "tanh")(t_in))
    outputs = keras.layers.Add()([_resistor(1.0)(i_in), net])
    model = HybridModel([i_in, t_in], outputs, sam=SAM())
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit([current, temperature], voltage.astype("float32"), batch_size=128, epochs=60, verbose=0)
    assert abs(model.physical_constants()["R"] - 4.7) / 4.7 < 0.01
    # the network has learned g: the fit is near the noise level
    residual = model.predict([current, temperature], verbose=0) - voltage
    assert float(np.mean(residual ** 2)) < 5e-3


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


def test_ode_layer_max_step_on_uneven_times_saves_and_exports(tmp_path):
    times = [0.0, 0.1, 5.0, 5.05]
    layer = ODELayer(decay, [PhysicalConstant("k", 0.5, unit="1/s", constraint="positive")],
                     times=times, max_step=0.05, name="uneven")
    inputs = keras.Input((1,))
    model = HybridModel(inputs, layer(inputs))
    y0 = np.array([[1.0], [2.0]], "float32")
    out = model.predict(y0, verbose=0)
    np.testing.assert_allclose(out[..., 0], y0 * np.exp(-0.5 * np.array(times))[None], rtol=1e-5)
    assert layer.get_config()["max_step"] == 0.05
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("uneven").max_step == 0.05
    np.testing.assert_array_equal(loaded.predict(y0, verbose=0), out)
    kh.export_saved_model(model, str(tmp_path / "served"))
    serve = tf.saved_model.load(str(tmp_path / "served")).signatures["serve"]
    (served,) = serve(tf.constant(y0)).values()
    np.testing.assert_allclose(served.numpy(), out, rtol=1e-6)
    with pytest.raises(ValueError, match="max_step=-1"):
        ODELayer(decay, [PhysicalConstant("k", 0.5)], times=times, max_step=-1)


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


# --- fitted initial state ----------------------------------------------------


def _exponential_least_squares(t, y, y0=None):
    """Least squares of y = y0 exp(-k t) in float64 (Gauss-Newton); `y0`
    fixed when given, fitted otherwise. Returns `(y0, k)`."""
    fixed = y0 is not None
    a, k = (y0 if fixed else y[0]), 0.3
    for _ in range(100):
        e = np.exp(-k * t)
        jac = np.stack([e, -a * t * e], 1)[:, 1:] if fixed else np.stack([e, -a * t * e], 1)
        step = np.linalg.lstsq(jac, y - a * e, rcond=None)[0]
        if fixed:
            k += step[0]
        else:
            a, k = a + step[0], k + step[1]
    return a, k


REPLICATES = 20


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def decay_replicates(t, y, constants):
    # Replicate i is state component i, with its own rate k_i.
    rates = keras.ops.stack([constants[f"k{i}"] for i in range(REPLICATES)])
    return -rates * y


def _fit(layer, x, y, steps, learning_rate):
    """Full-batch Adam on the MSE."""
    import tensorflow as tf

    layer(x)
    variables = layer.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((layer(x) - y) ** 2)
        optimizer.apply(tape.gradient(loss, variables), variables)

    for _ in range(steps):
        step()
    return layer.physical_constants()


def test_fitted_initial_state_estimates_the_rate_better_than_the_first_reading():
    # Issue 15's goal: y = y0 exp(-k t) + noise (y0 = 1, k = 0.5, sd 0.05,
    # 21 readings), 20 replicates; y0 fitted against y0 fixed at the noisy
    # first reading. The replicates are the 20 components of one state, each
    # with its own constants: the loss is their mean and Adam's update is
    # elementwise, so this is 20 separate fits in one graph.
    rng = np.random.default_rng(0)
    times = np.linspace(0.0, 4.0, 21)
    readings = np.exp(-0.5 * times) + 0.05 * rng.standard_normal((REPLICATES, times.size))
    rates = [PhysicalConstant(f"k{i}", 0.3, unit="1/s", constraint="positive") for i in range(REPLICATES)]
    fixed = ODELayer(decay_replicates, rates, times)
    fitted = ODELayer(decay_replicates, [PhysicalConstant.from_config(c.get_config()) for c in rates], times,
                      initial_state=[PhysicalConstant(f"y0_{i}", float(y[0])) for i, y in enumerate(readings)])
    first = readings[None, :, 0].astype("float32")  # ignored by `fitted`
    target = readings.T[None].astype("float32")  # (1, time, replicate)
    fixed_c = _fit(fixed, first, target, 150, 0.03)
    fitted_c = _fit(fitted, first, target, 150, 0.03)
    k_fixed = np.array([fixed_c[f"k{i}"] for i in range(REPLICATES)])
    k_fitted = np.array([fitted_c[f"k{i}"] for i in range(REPLICATES)])
    y0_fitted = np.array([fitted_c[f"y0_{i}"] for i in range(REPLICATES)])
    # Each fit reached its least-squares solution (RK4 vs exact exp: < 1e-5).
    for i, y in enumerate(readings):
        np.testing.assert_allclose(k_fixed[i], _exponential_least_squares(times, y, y0=y[0])[1], rtol=1e-2)
        np.testing.assert_allclose([y0_fitted[i], k_fitted[i]], _exponential_least_squares(times, y), rtol=1e-2)
    error_fixed, error_fitted = np.mean(np.abs(k_fixed - 0.5)), np.mean(np.abs(k_fitted - 0.5))
    # Least squares in numpy: 0.0244 fixed, 0.0162 fitted.
    assert error_fitted < error_fixed, (error_fitted, error_fixed)


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def two_decays(t, y, constants):
    return -constants["k"] * y


def test_initial_state_mixes_fitted_and_observed_components_and_round_trips(tmp_path):
    layer = ODELayer(two_decays, [PhysicalConstant("k", 0.5, unit="1/s", constraint="positive")],
                     times=[0.0, 1.0], method="rk4", substeps=4,
                     initial_state=[None, PhysicalConstant("T0", 3.0, unit="K")])
    y0 = np.array([[2.0, 100.0], [5.0, -7.0]], "float32")  # column 1 is ignored
    out = np.asarray(layer(y0))
    np.testing.assert_allclose(out[:, 0], [[2.0, 3.0], [5.0, 3.0]])
    np.testing.assert_allclose(out[:, 1], np.array([[2.0, 3.0], [5.0, 3.0]]) * np.exp(-0.5), rtol=1e-4)
    assert layer.physical_constants() == {"k": 0.5, "T0": 3.0}
    assert layer.units() == {"k": "1/s", "T0": "K"}
    # Per-sample initial values through `constants=`, like any constant.
    out = np.asarray(layer(y0, constants={"T0": np.array([[1.0], [4.0]], "float32")}))
    np.testing.assert_allclose(out[:, 0, 1], [1.0, 4.0])
    # The fitted value is a physical constant: SAM's physical group.
    inputs = keras.Input((2,))
    model = HybridModel(inputs, layer(inputs), sam=SAM(rho=0.1, perturb="neural"))
    assert kh.physical_constants(model) == {"k": 0.5, "T0": 3.0}
    assert [v.path for v in model.trainable_variables if kh.is_physical_variable(v)] == [
        f"{layer.name}/k", f"{layer.name}/T0"]
    layer._raw["T0"].assign(layer.initial_state[1].to_raw(3.5))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[-1].get_config()["initial_state"] == layer.get_config()["initial_state"]
    np.testing.assert_allclose(loaded.predict(y0, verbose=0), model.predict(y0, verbose=0))
    np.testing.assert_allclose(kh.physical_constants(loaded)["T0"], 3.5, rtol=1e-6)


@pytest.mark.parametrize(
    "initial_state, error, match",
    [
        (PhysicalConstant("T0", 1.0), TypeError, "one `PhysicalConstant` or None per state component"),
        ([None, None], ValueError, "at least one"),
        ([None, PhysicalConstant("k", 1.0)], ValueError, r"duplicates: \['k'\]"),
    ],
)
def test_bad_initial_state_is_rejected(initial_state, error, match):
    with pytest.raises(error, match=match):
        ODELayer(two_decays, [PhysicalConstant("k", 0.5)], times=[0.0, 1.0], initial_state=initial_state)


def test_initial_state_length_must_match_the_state():
    layer = ODELayer(two_decays, [PhysicalConstant("k", 0.5)], times=[0.0, 1.0],
                     initial_state=[PhysicalConstant("T0", 1.0)])
    with pytest.raises(ValueError, match=r"initial_state with 1 entries.*input has 2 components"):
        layer(np.ones((1, 2), "float32"))


# --- registry and summary ----------------------------------------------------


def test_constants_are_known_by_a_registry_not_an_attribute_on_the_variable():
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(1)
    physics = _resistor(2.0)
    model = keras.Model(inputs, physics(inputs) + dense(inputs))
    raw = physics._raw["R"]
    assert kh.is_physical_variable(raw)
    assert not kh.is_physical_variable(dense.kernel) and not kh.is_physical_variable(dense.bias)
    assert [a for a in vars(raw) if "keras_hybrid" in a] == []  # nothing patched onto Keras's object
    assert kh.physical_constants(model) == {"R": 2.0}
    # A clone has its own variables, registered by its own layers.
    clone = keras.models.clone_model(model)
    clone_raw = [v for v in clone.weights if kh.is_physical_variable(v)]
    assert len(clone_raw) == 1 and clone_raw[0] is not raw


def test_constants_of_same_named_layers_in_two_sub_models_keep_their_own_keys():
    # Both layers are "law" (their variables' paths are both "law/R"): each
    # constant keeps its own entry, named by the sub-model holding it.
    def sub_model(value, name):
        inputs = keras.Input((1,))
        return keras.Model(inputs, _resistor(value, name="law")(inputs), name=name)

    inputs = keras.Input((1,))
    model = keras.Model(inputs, sub_model(1.0, "a")(inputs) + sub_model(2.0, "b")(inputs))
    assert kh.physical_constants(model) == {"a/law/R": 1.0, "b/law/R": 2.0}
    assert [row["name"] for row in kh.constants_table(model)] == ["a/law/R", "b/law/R"]
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 1), "float32")
    history = model.fit(x, x, epochs=1, verbose=0, callbacks=[kh.ConstantsHistory()])
    assert {"constant/a/law/R", "constant/b/law/R"} <= set(history.history)


def test_summary_prints_name_value_unit_constraint_trainable():
    inputs = keras.Input((2,))
    layer = ODELayer(two_decays, [PhysicalConstant("k", 0.25, unit="1/s", constraint="positive"),
                                  PhysicalConstant("b", 1.5, constraint=(0.0, 2.0), trainable=False)],
                     times=[0.0, 1.0], initial_state=[None, PhysicalConstant("T0", -3.0, unit="K")],
                     name="cooling")
    model = keras.Model(inputs, layer(inputs), name="m")
    lines = []
    kh.summary(model, print_fn=lines.append)
    assert lines == [
        "Physical constants of 'm'",
        "name  value  unit  constraint  trainable  variable",
        "k     0.25   1/s   positive    True       cooling/k",
        "b     1.5    -     (0, 2)      False      cooling/b",
        "T0    -3     K     none        True       cooling/T0",
    ]
    lines.clear()
    kh.summary(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)], name="plain"), print_fn=lines.append)
    assert lines == ["Model 'plain' has no physical constants."]


def test_an_unregistered_equation_is_warned_about_and_named_when_copying_fails():
    # It trains and saves silently, but the file does not load and
    # profile_likelihood cannot copy the model: say so when it is built.
    def unregistered_decay(t, c):
        return c["k"] * t

    with pytest.warns(UserWarning, match=r"'.*unregistered_decay' is not registered with Keras"):
        layer = ScientificLayer(unregistered_decay, [PhysicalConstant("k", 1.0)])
    with pytest.warns(UserWarning, match=r"unregistered_decay' is not registered") as caught:
        ODELayer(unregistered_decay, [PhysicalConstant("k", 1.0)], times=[0.0, 1.0])
    assert caught[0].filename == __file__  # the user's line, not the library's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScientificLayer(ohm, [PhysicalConstant("R", 1.0)])  # registered: no warning
    inputs = keras.Input((1,))
    model = HybridModel(inputs, layer(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x = np.linspace(0, 1, 8)[:, None].astype("float32")
    with pytest.raises(TypeError, match=r"cannot be copied .* equations \['[^']*unregistered_decay'\]"):
        kh.profile_likelihood(model, "k", [0.5, 1.0, 1.5], x, x, epochs=1)


def test_an_equation_whose_registered_name_another_function_took_is_warned_about():
    @keras.saving.register_keras_serializable(package="test_layers_clash")
    def clashing_law(t, c):
        return c["k"] * t

    first = clashing_law

    @keras.saving.register_keras_serializable(package="test_layers_clash")
    def clashing_law(t, c):  # noqa: F811 (the same registered name on purpose)
        return 2.0 * c["k"] * t

    with pytest.warns(UserWarning, match=r"another function holds \('(test_layers_clash>)?clashing_law', from .*would use that other function"):
        ScientificLayer(first, [PhysicalConstant("k", 1.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScientificLayer(clashing_law, [PhysicalConstant("k", 1.0)])  # the one Keras finds


def test_a_constant_given_per_sample_needs_one_row_per_sample():
    # 3 rows for 4 samples broadcast into a (4, 3) output, silently.
    layer = _resistor(name="per_sample")
    current = np.ones((4, 1), "float32")
    with pytest.raises(ValueError, match=r"Layer 'per_sample' got 4 samples in the first input but 3 "
                                         r"rows in constants\['R'\].*shape \(3,\)"):
        layer(current, constants={"R": np.ones((3,), "float32")})
    per_sample = np.arange(1, 5, dtype="float32")[:, None]
    np.testing.assert_allclose(layer(current, constants={"R": per_sample}), per_sample)
    np.testing.assert_allclose(layer(current, constants={"R": np.float32(2.0)}), 2 * current)
