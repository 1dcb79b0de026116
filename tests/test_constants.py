import math

import numpy as np
import pytest

from keras_hybrid import PhysicalConstant


@pytest.mark.parametrize(
    "constraint, value",
    [(None, -3.0), ("positive", 1e-3), ("positive", 25.0), ((0.0, 2.0), 1.5), ((-1.0, 1.0), -0.9)],
)
def test_raw_initial_value_maps_back_to_value(constraint, value):
    c = PhysicalConstant("k", value, constraint=constraint)
    back = float(np.asarray(c.to_physical(c.raw_initial_value())))
    np.testing.assert_allclose(back, value, rtol=1e-5)


@pytest.mark.parametrize("constraint", ["positive", (0.5, 2.0)])
def test_constraint_holds_for_any_raw_value(constraint):
    c = PhysicalConstant("k", 1.0, constraint=constraint)
    raw = np.array([-80.0, -5.0, 0.0, 5.0, 80.0], "float32")
    values = np.asarray(c.to_physical(raw))
    if constraint == "positive":
        assert np.all(values > 0)
    else:
        assert np.all((values >= 0.5) & (values <= 2.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="k", value=-1.0, constraint="positive"), "value=-1.0"),
        (dict(name="k", value=0.0, constraint="positive"), "value=0.0"),
        (dict(name="k", value=3.0, constraint=(0.0, 2.0)), "value=3.0"),
        (dict(name="k", value=1.0, constraint=(2.0, 0.0)), r"constraint=\(2.0, 0.0\)"),
        (dict(name="k", value=float("nan")), "value=nan"),
        (dict(name="k", value="fast"), "value='fast'"),
        (dict(name="not a name", value=1.0), "name='not a name'"),
        (dict(name="k", value=1.0, constraint="negative"), "constraint='negative'"),
    ],
)
def test_bad_constants_are_rejected(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PhysicalConstant(**kwargs)


def test_config_round_trip():
    c = PhysicalConstant("D", 1e-3, unit="m^2/s", constraint=(0.0, 0.1), description="diffusivity")
    assert PhysicalConstant.from_config(c.get_config()) == c


# --- scale-relative parameterization ---------------------------------------

import keras  # noqa: E402

import keras_hybrid as kh  # noqa: E402

DATA = __import__("pathlib").Path(__file__).parent / "data"


@pytest.mark.parametrize(
    "kwargs, raw",
    [
        # positive: value = scale * exp(raw)
        (dict(value=3e5, constraint="positive", scale=2e5), np.log(1.5)),
        (dict(value=2e5, constraint="positive"), 0.0),  # scale defaults to |value|
        (dict(value=3e-4, constraint="positive", scale=1e-3), np.log(0.3)),
        # unconstrained: value = scale * raw
        (dict(value=-6.0, scale=3.0), -2.0),
        (dict(value=-6.0), -1.0),
        (dict(value=0.0), 0.0),  # scale 1 for a zero value
        # bounded: lo + (hi - lo) * sigmoid(raw), scale unused
        (dict(value=1.5, constraint=(0.0, 2.0), scale=7.0), np.log(3.0)),
        # legacy (keras_hybrid 0.1): softplus and identity
        (dict(value=25.0, constraint="positive", parameterization="legacy"), 25.0 + np.log(-np.expm1(-25.0))),
        (dict(value=0.5, constraint="positive", parameterization="legacy"), np.log(np.expm1(0.5))),
        (dict(value=-6.0, parameterization="legacy"), -6.0),
    ],
)
def test_raw_values_are_the_documented_maps(kwargs, raw):
    c = PhysicalConstant("k", **kwargs)
    np.testing.assert_allclose(c.raw_initial_value(), raw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c.to_raw(kwargs["value"]), raw, rtol=1e-6, atol=1e-7)
    assert c.to_raw(kwargs["value"]).dtype == np.float32
    # to_raw inverts to_physical on arrays and on tensors.
    values = np.array([0.7, 1.0, 1.3]) * kwargs["value"] if kwargs["value"] else np.array([-1.0, 0.0, 2.0])
    if isinstance(c.constraint, tuple):
        values = np.array([0.1, 1.0, 1.9])
    back = np.asarray(c.to_physical(c.to_raw(values)))
    np.testing.assert_allclose(back, values, rtol=2e-6, atol=1e-7)
    tensor_raw = c.to_raw(keras.ops.convert_to_tensor(values, "float32"))
    assert keras.ops.is_tensor(tensor_raw)
    np.testing.assert_allclose(np.asarray(c.to_physical(tensor_raw)), values, rtol=2e-6, atol=1e-7)


def test_to_physical_is_differentiable_with_the_chain_rule():
    import tensorflow as tf

    c = PhysicalConstant("Vm", 200.0, constraint="positive", scale=100.0)
    raw = tf.Variable(np.log(2.0), dtype="float32")
    with tf.GradientTape() as tape:
        value = c.to_physical(raw)
    # d(scale * exp(raw)) / d raw = value = 200
    np.testing.assert_allclose(float(tape.gradient(value, raw)), 200.0, rtol=1e-6)


def _mm_least_squares(s, v):
    """Least-squares Michaelis-Menten constants (float64): a log grid on K
    with Vm profiled out, then Gauss-Newton on (Vm, K)."""
    s, v = np.asarray(s, float), np.asarray(v, float)

    def profile(k):
        f = s / (k + s)
        vm = f @ v / (f @ f)
        return vm, np.sum((vm * f - v) ** 2)

    grid = np.geomspace(s.min() * 1e-3, s.max() * 1e3, 4001)
    k = grid[np.argmin([profile(g)[1] for g in grid])]
    vm = profile(k)[0]
    for _ in range(30):
        f = s / (k + s)
        jac = np.stack([f, -vm * s / (k + s) ** 2], 1)
        step = np.linalg.lstsq(jac, v - vm * f, rcond=None)[0]
        vm, k = vm + step[0], k + step[1]
    return np.array([vm, k])


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def michaelis_menten(s, c):
    return c["Vm"] * s / (c["K"] + s)


def _fit_steps(layer, x, y, steps, learning_rate=1e-2):
    """Full-batch Adam on the MSE; returns the constants after each step."""
    import tensorflow as tf

    layer(x)
    variables = layer.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)
    names = [spec.name for spec in layer.constant_specs]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((layer(x) - y) ** 2)
        optimizer.apply(tape.gradient(loss, variables), variables)
        values = layer.constant_tensors()
        return keras.ops.stack([values[n] for n in names])

    return np.array([np.asarray(step()) for _ in range(steps)])


@pytest.mark.parametrize("magnitude", [1e-3, 1.0, 1e3])
def test_michaelis_menten_reaches_least_squares_at_every_magnitude(magnitude):
    # Issue 15's goal: Vm = 200, K = 0.05, started at 100 and 0.5, Adam(1e-2),
    # full batch; every magnitude (data and constants) times 1e-3, 1, 1e3.
    rng = np.random.default_rng(0)
    s = np.geomspace(0.005, 1.0, 24) * magnitude
    v = 200.0 * magnitude * s / (0.05 * magnitude + s) + 4.0 * magnitude * rng.standard_normal(24)
    expected = _mm_least_squares(s, v)
    layer = kh.ScientificLayer(michaelis_menten, [
        PhysicalConstant("Vm", 100.0 * magnitude, unit="uM/s", constraint="positive"),
        PhysicalConstant("K", 0.5 * magnitude, unit="uM", constraint="positive"),
    ])
    path = _fit_steps(layer, s[:, None].astype("float32"), v[:, None].astype("float32"), 1500)
    error = np.max(np.abs(path / expected - 1), axis=1)
    # Within 1 % by step 1500 and stays there (measured: from step 842 on).
    assert error[-1] < 0.01, (path[-1], expected)
    assert np.all(error[1000:] < 0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # Issue 12, item 7: float32 overflow became inf, collapsed bounds NaN.
        (dict(value=1e39), r"overflows float32.*value=1e\+39"),
        (dict(value=-1e39), r"overflows float32.*value=-1e\+39"),
        (dict(value=1e-45, constraint="positive"), r"underflows float32.*value=1e-45"),
        (dict(value=1.0 + 5e-9, constraint=(1.0, 1.0 + 1e-8)), r"collapse in float32.*constraint=\(1.0, 1.00000001\)"),
        (dict(value=0.0, constraint=(-3e38, 3e38)), r"collapse in float32.*width inf"),
        (dict(value=0.5, constraint=(0.0, 1e39)), r"overflows float32.*constraint\[1\]=1e\+39"),
        (dict(value=1.0, scale=-1), r"`scale` must be > 0. Received: scale=-1"),
        (dict(value=1.0, scale=0.0), r"`scale` must be > 0. Received: scale=0.0"),
        (dict(value=1.0, scale=1e-40), r"underflows float32.*scale=1e-40"),
        (dict(value=1.0, scale="big"), r"scale='big'"),
        (dict(value=1.0, parameterization="log"), r"parameterization='log'"),
        # These read back as 0.0, a positive one too.
        (dict(value=1e-40), r"underflows float32.*value=1e-40"),
        (dict(value=1e-30, constraint="positive", scale=1e30), r"maps back to 0.0.*value=1e-30"),
        (dict(value=1.0, trainable="False"), r"`trainable` must be a bool. Received: trainable='False'"),
    ],
)
def test_values_float32_cannot_hold_are_rejected(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PhysicalConstant("k", **kwargs)


@pytest.mark.parametrize("lo, hi, value", [(0.0, 1.0, 1e-4), (0.0, 1e-9, 1e-13), (0.0, 1.0, 0.9999),
                                           (2.0, 3.0, 2.0001), (-1.0, 1.0, 0.3)])
def test_bounded_constants_read_back_to_float32_precision_near_a_bound(lo, hi, value):
    # TFP's float32 Sigmoid(low, high) read 1e-4 in (0, 1) back as 1.0001e-4.
    c = PhysicalConstant("k", value, constraint=(lo, hi))
    back = float(np.asarray(c.to_physical(c.raw_initial_value())))
    distance = min(value - lo, hi - value)
    assert abs(back - value) <= 4 * np.finfo(np.float32).eps * max(distance, 1e-30) + abs(value) * 6e-8
    # Monotone across the switch from one bound to the other.
    raw = np.float32([-1e-3, -np.float32(1e-7), 0.0, 1e-7, 1e-3])
    assert np.all(np.diff(np.asarray(c.to_physical(raw), "float64")) >= 0)


def test_largest_float32_values_are_accepted_and_finite():
    for c in (PhysicalConstant("k", 3e38), PhysicalConstant("k", 3e38, constraint="positive"),
              PhysicalConstant("k", 1e-37, constraint="positive")):
        value = float(np.asarray(c.to_physical(c.raw_initial_value())))
        np.testing.assert_allclose(value, c.value, rtol=1e-6)


def test_config_has_every_argument_and_a_missing_parameterization_is_legacy():
    c = PhysicalConstant("Vm", 2e5, "uM/s", "positive", False, "max rate", scale=1e5)
    config = c.get_config()
    assert config["scale"] == 1e5 and config["parameterization"] == "scaled"
    assert PhysicalConstant.from_config(config) == c
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(c)) == c
    # A keras_hybrid 0.1 config has neither `scale` nor `parameterization`.
    old = {k: v for k, v in config.items() if k not in ("scale", "parameterization")}
    legacy = PhysicalConstant.from_config(old)
    assert legacy.parameterization == "legacy"
    np.testing.assert_allclose(legacy.raw_initial_value(), 2e5, rtol=1e-6)  # softplus^-1(x) ~ x


# keras_hybrid 0.1 wrote these (tests/data/make_legacy_0_1.py): raw values
# k = 1.7 (softplus), A = -3.25 (identity), b = 0.4 (2 * sigmoid).
LEGACY_VALUES = {"k": np.log1p(np.exp(1.7)), "A": -3.25, "b": 2.0 / (1.0 + np.exp(-0.4))}


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def legacy_law(x, c):
    return c["k"] * x + c["A"] + c["b"] * x * x


def _law_model(**constraints):
    inputs = keras.Input((1,))
    layer = kh.ScientificLayer(legacy_law, [
        PhysicalConstant("k", 2.0, unit="1/s", constraint=constraints.get("k", "positive")),
        PhysicalConstant("A", 4.0, unit="V", constraint=constraints.get("A")),
        PhysicalConstant("b", 1.5, constraint=constraints.get("b", (0.0, 2.0))),
    ], name="law")
    return keras.Model(inputs, layer(inputs))


def _assert_legacy_values(model):
    values = kh.physical_constants(model)
    for name, expected in LEGACY_VALUES.items():
        np.testing.assert_allclose(values[name], expected, rtol=1e-6)
    x = np.array([[2.0]], "float32")
    expected = LEGACY_VALUES["k"] * 2 + LEGACY_VALUES["A"] + LEGACY_VALUES["b"] * 4
    np.testing.assert_allclose(model.predict(x, verbose=0), [[expected]], rtol=1e-5)


def test_keras_file_saved_by_0_1_loads_with_its_values():
    model = keras.saving.load_model(DATA / "legacy_0_1.keras")
    _assert_legacy_values(model)
    specs = model.get_layer("law").constant_specs
    assert [s.parameterization for s in specs] == ["legacy"] * 3
    # The raw variables are the file's, bit for bit.
    np.testing.assert_array_equal([v.numpy() for v in model.weights], np.float32([1.7, -3.25, 0.4]))


def test_weights_file_saved_by_0_1_loads_into_a_scaled_model_with_its_values():
    model = _law_model()
    model.load_weights(DATA / "legacy_0_1.weights.h5")
    _assert_legacy_values(model)
    # Converted to the scaled maps: k = 2 exp(raw), A = 4 raw.
    np.testing.assert_allclose(model.weights[0].numpy(), np.log(LEGACY_VALUES["k"] / 2.0), rtol=1e-5)
    np.testing.assert_allclose(model.weights[1].numpy(), -3.25 / 4.0, rtol=1e-6)


def test_weights_load_into_another_constraint_by_physical_value(tmp_path):
    # Issue 12, item 7: a positive 2.0 loaded under another constraint became 0.8647.
    saved = _law_model()
    saved.get_layer("law")._raw["k"].assign(np.log(1.25))  # k = 2 exp(raw) = 2.5
    saved.save_weights(tmp_path / "w.weights.h5")
    other = _law_model(k=(0.0, 10.0), A="positive", b=None)
    other.load_weights(tmp_path / "w.weights.h5")
    values = kh.physical_constants(other)
    np.testing.assert_allclose([values["k"], values["A"], values["b"]], [2.5, 4.0, 1.5], rtol=1e-6)
    # k = 10 sigmoid(raw) = 2.5: raw = log(2.5 / 7.5)
    np.testing.assert_allclose(other.weights[0].numpy(), np.log(1.0 / 3.0), rtol=1e-5)
    # Under the same constraints the raw values load bit for bit.
    same = _law_model()
    same.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal([v.numpy() for v in same.weights], [v.numpy() for v in saved.weights])
    # A value the new constraint cannot hold is an error naming it.
    saved.get_layer("law")._raw["A"].assign(-1.0)  # A = 4 * raw = -4
    saved.save_weights(tmp_path / "negative.weights.h5")
    with pytest.raises(ValueError, match=r"'A' of layer 'law'.*-4.0.*'positive'"):
        other.load_weights(tmp_path / "negative.weights.h5")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(value=3.0, constraint="positive", scale=0.5),
        dict(value=-3.0, constraint=None, scale=2.0),
        dict(value=0.7, constraint=(0.0, 2.0)),
        dict(value=3.0, constraint="positive", parameterization="legacy"),
    ],
)
def test_asam_scale_is_the_physical_scale_over_the_slope(kwargs):
    # T = (|c| + eta * scale) / |dc/draw|, the slope by central differences.
    spec = PhysicalConstant("c", **kwargs)
    eta, raw = 0.05, float(spec.raw_initial_value())
    h = 1e-2
    slope = (float(spec.to_physical(np.float32(raw + h))) - float(spec.to_physical(np.float32(raw - h)))) / (2 * h)
    expected = (abs(kwargs["value"]) + eta * spec.scale) / abs(slope)
    got = float(spec.asam_scale(np.float32(raw), eta))
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_asam_scale_of_a_positive_constant_does_not_depend_on_its_scale():
    # With c = scale * exp(raw) a raw step is a relative change: T -> 1 as eta -> 0.
    for scale in (1e-4, 1.0, 1e4):
        spec = PhysicalConstant("k", 2.0, constraint="positive", scale=scale)
        np.testing.assert_allclose(float(spec.asam_scale(spec.raw_initial_value(), 0.0)), 1.0, rtol=1e-6)


def _decay_law(x, c):
    return c["A"] * keras.ops.exp(-c["k"] * x)


@pytest.mark.parametrize("value, error, match", [
    (1e40, ValueError, r"Constant 'k' of layer 'law': `value` overflows float32.*value=1e\+40"),
    (float("nan"), ValueError, r"Constant 'k' of layer 'law': `value` must be finite"),
    ("0.5", TypeError, r"`value` must be a real number. Received: value='0.5' of type str"),
    (np.array([0.5, 0.6]), TypeError, r"must be a real number"),
    (3e38, ValueError, r"cannot be stored in float32 under its scale 1e-06"),
    (1e-46, ValueError, r"`value` underflows float32.*value=1e-46"),
    (1e-44, ValueError, r"underflows float32"),
])
def test_set_constant_refuses_values_float32_cannot_hold(value, error, match):
    # 1e40 used to be stored as inf: every prediction after it was inf.
    layer = kh.ScientificLayer(_decay_law, [
        kh.PhysicalConstant("A", 1.0),
        kh.PhysicalConstant("k", 1e-6, constraint="positive", scale=1e-6),
    ], name="law")
    layer(np.ones((2, 1), "float32"))
    with pytest.raises(error, match=match):
        layer.set_constant("k", value)
    assert layer.physical_constants()["k"] == pytest.approx(1e-6)
    layer.set_constant("k", np.float32(2e-6))  # NumPy scalars are numbers
    assert layer.physical_constants()["k"] == pytest.approx(2e-6)


def test_set_constant_refuses_a_value_that_reads_back_as_its_bound():
    # 1 - 1e-10 is inside (0, 1) but reads back as 1.0 in float32, which the
    # constructor refuses and `set_constant` stored.
    layer = kh.ScientificLayer(_linear_law, [PhysicalConstant("b", 0.5, constraint=(0.0, 1.0))])
    with pytest.raises(ValueError, match=r"too close to a bound .*reads back as 1.0"):
        layer.set_constant("b", 1 - 1e-10)
    layer.set_constant("b", 0.999)
    assert layer.physical_constants()["b"] == pytest.approx(0.999, rel=1e-6)


def test_bounds_given_as_an_array_are_the_tuple():
    # `constraint == "none"` compared an array elementwise ("truth value of
    # an array ... is ambiguous").
    spec = PhysicalConstant("k", 0.5, constraint=np.array([0.0, 1.0]))
    assert spec.constraint == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"`constraint` must be None, 'positive' or a \(lo, hi\) tuple"):
        PhysicalConstant("k", 0.5, constraint=np.array([0.0, 1.0, 2.0]))


def _linear_law(x, c):
    return c["b"] * x


def test_domain_is_what_the_constraint_allows():
    assert PhysicalConstant("a", 1.0).domain == (-math.inf, math.inf)
    assert PhysicalConstant("k", 1.0, constraint="positive").domain == (0.0, math.inf)
    assert PhysicalConstant("f", 0.5, constraint=(0.1, 2.0)).domain == (0.1, 2.0)


def test_zero_dimensional_arrays_are_numbers():
    # A value read off an array or a tensor (`np.array(2.0)`) was refused
    # as "not a real number"; a 0-d bool array still is.
    constant = PhysicalConstant("k", np.array(0.5), constraint=(np.array(0.0), np.float32(1.0)))
    assert constant.value == 0.5 and constant.constraint == (0.0, 1.0)
    layer = kh.ScientificLayer(lambda x, c: c["k"] * x, [constant])
    layer.set_constant("k", np.array(0.25))
    assert layer.physical_constants()["k"] == pytest.approx(0.25)
    with pytest.raises(TypeError, match="`value` must be a real number"):
        PhysicalConstant("k", np.array(True))
