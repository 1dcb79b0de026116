"""The data the diagnostics take: finite `tf.data.Dataset`s (read once into
arrays, as `fit` takes them), float64 models, and profiles whose accepted
set is not one interval."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_hybrid as kh
from keras_hybrid import uncertainty as un


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
def decay(t, k):
    return k["A"] * keras.ops.exp(-k["k"] * t)


def _data(n=40, seed=0):
    t = np.linspace(0, 3, n)[:, None].astype("float32")
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.shape)
    return t, (2.0 * np.exp(-0.7 * t) + noise).astype("float32")


def _model(dtype=None, network=False):
    inputs = keras.Input((1,), dtype=dtype)
    out = kh.ScientificLayer(decay, [kh.PhysicalConstant("A", 1.9),
                                     kh.PhysicalConstant("k", 0.65, constraint="positive")],
                             name="law", dtype=dtype)(inputs)
    if network:
        net = keras.Sequential([keras.layers.Dense(4, "tanh", dtype=dtype),
                                keras.layers.Dense(1, dtype=dtype)])
        out = keras.layers.Add(dtype=dtype)([out, net(inputs)])
    model = kh.HybridModel(inputs, out, sam=None)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    return model


def test_constant_uncertainty_reads_a_dataset_as_its_arrays():
    t, y = _data()
    model = _model(network=True)
    w = np.linspace(0.5, 2.0, len(t)).astype("float32")
    arrays = kh.constant_uncertainty(model, t, y, sample_weight=w)
    ds = tf.data.Dataset.from_tensor_slices((t, y, w)).batch(7)
    from_dataset = kh.constant_uncertainty(model, ds, None)
    assert from_dataset.n == arrays.n == 40
    assert from_dataset.stderr == pytest.approx(arrays.stderr, rel=1e-5)
    assert from_dataset.noise_std == pytest.approx(arrays.noise_std, rel=1e-5)
    # Without the weights the result differs: the third part was used
    # (`y` may be left out with a dataset, as in `fit`).
    unweighted = kh.constant_uncertainty(model, tf.data.Dataset.from_tensor_slices((t, y)).batch(7))
    assert unweighted.noise_std != pytest.approx(arrays.noise_std, rel=1e-3)


def test_dataset_errors_name_the_argument():
    t, y = _data()
    model = _model()
    ds = tf.data.Dataset.from_tensor_slices((t, y)).batch(8)
    with pytest.raises(ValueError, match=r"`y` must be None when `x` is a dataset"):
        kh.constant_uncertainty(model, ds, y)
    with pytest.raises(ValueError, match=r"`x` must be a finite dataset.*\.take\(n\)"):
        kh.constant_uncertainty(model, ds.repeat(), None)
    with pytest.raises(ValueError, match=r"`x` must yield `\(x, y\)` or `\(x, y, sample_weight\)`"):
        kh.constant_uncertainty(model, tf.data.Dataset.from_tensor_slices(t).batch(8), None)
    scalars = tf.data.Dataset.from_tensor_slices((t[:, 0], y[:, 0]))   # not batched
    with pytest.raises(ValueError, match=r"`x` must yield batches.*\.batch\(n\)"):
        kh.constant_uncertainty(model, scalars, None)
    with pytest.raises(ValueError, match=r"`x` must be arrays with a first axis of samples.*generator"):
        kh.constant_uncertainty(model, (row for row in t), y)
    with pytest.raises(ValueError, match=r"`y` must be given.*Received: y=None with x of type ndarray"):
        kh.constant_uncertainty(model, t)


def test_profile_likelihood_reads_a_dataset_as_its_arrays():
    t, y = _data()
    model = _model()
    arrays = kh.profile_likelihood(model, "k", [0.6, 0.8], t, y, epochs=0)
    ds = tf.data.Dataset.from_tensor_slices((t, y)).batch(16)
    from_dataset = kh.profile_likelihood(model, "k", [0.6, 0.8], ds, None, epochs=0)
    assert from_dataset.rss == pytest.approx(arrays.rss, rel=1e-6)


def test_radius_path_reads_datasets_for_training_and_validation():
    t, y = _data(30)
    tv, yv = _data(10, seed=1)

    def build(sam):
        model = _model(network=True)
        model.sam = sam
        return model

    kwargs = dict(rhos=[0.0, 0.1], epochs=2, batch_size=30, physics_only=False)
    arrays = kh.radius_path(build, t, y, validation_data=(tv, yv), **kwargs)
    ds = kh.radius_path(build, tf.data.Dataset.from_tensor_slices((t, y)).batch(30), None,
                        validation_data=tf.data.Dataset.from_tensor_slices((tv, yv)).batch(4),
                        **kwargs)
    for a, b in zip(arrays.summary, ds.summary):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["constants"] == pytest.approx(a["constants"], rel=1e-5)
    with pytest.raises(ValueError, match=r"`validation_data` must be a finite dataset"):
        kh.radius_path(build, t, y, validation_data=tf.data.Dataset.from_tensor_slices((tv, yv)).batch(4)
                       .repeat(), **kwargs)


def test_float64_model_against_classical_least_squares():
    # A layer computing in float64 (its constants are stored in float32):
    # the residuals and products follow the model's dtype.
    t, y = _data()
    model = _model(dtype="float64")
    layer = model.get_layer("law")
    t64, y64 = t[:, 0].astype("float64"), y[:, 0].astype("float64")
    c = np.array([1.9, 0.65])
    for _ in range(50):
        e = np.exp(-c[1] * t64)
        j = np.stack([e, -c[0] * t64 * e], 1)
        c = c + np.linalg.lstsq(j, y64 - c[0] * e, rcond=None)[0]
    layer.set_constant("A", float(c[0]))
    layer.set_constant("k", float(c[1]))
    result = kh.constant_uncertainty(model, t.astype("float64"), y.astype("float64"))
    e = np.exp(-c[1] * t64)
    j = np.stack([e, -c[0] * t64 * e], 1)
    r = y64 - c[0] * e
    cov = (r @ r / (len(t) - 2)) * np.linalg.inv(j.T @ j)
    assert result.stderr["A"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-3)
    assert result.stderr["k"] == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-3)
    hybrid = _model(dtype="float64", network=True)
    # The matrix-free path in float64 (the standard-normal prior: the
    # evidence's quadrature would differ from the dense eigenvalues).
    marginal = kh.constant_uncertainty(hybrid, t, y, prior_precision=1.0)
    cg = kh.constant_uncertainty(hybrid, t, y, method="cg", prior_precision=1.0)
    assert cg.stderr["k"] == pytest.approx(marginal.stderr["k"], rel=0.05)


def test_profile_interval_spans_a_set_that_is_not_one_interval():
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    n = 20
    # RSS below the threshold at 0.2 and 0.5, above it at 0.3 and 0.4.
    stat = np.array([10.0, 0.0, 8.0, 9.0, 1.0, 12.0])
    rss = np.exp(stat / n)
    lo, hi, back = un.profile_interval(values, rss, n)
    assert back == pytest.approx(stat)
    cut = math.sqrt(un.chi2_1_quantile(0.95))
    assert lo == pytest.approx(0.2 - 0.1 * cut / math.sqrt(10.0))
    assert hi == pytest.approx(0.5 + 0.1 * (cut - 1.0) / (math.sqrt(12.0) - 1.0))
    assert un.profile_gaps(values, stat, un.chi2_1_quantile(0.95)) == [0.3, 0.4]
    assert un.profile_gaps(values[:3], stat[:3], un.chi2_1_quantile(0.95)) == []
    # A failed refit (NaN) next to the set is passed over, not taken as an open end.
    rss_nan = rss.copy()
    rss_nan[0] = np.nan
    lo_nan, _, _ = un.profile_interval(np.append(values, 0.05), np.append(rss_nan, np.exp(10.0 / n)), n)
    assert lo_nan == pytest.approx(0.2 - 0.15 * cut / math.sqrt(10.0))


def _fitted_decay():
    """`(t, y, model, Laplace interval of k, k)` of the decay law fitted to
    its least-squares minimum."""
    t, y = _data()
    model = _model()
    model.fit(t, y, epochs=300, batch_size=40, verbose=0)
    interval = kh.constant_uncertainty(model, t, y).intervals["k"]
    return t, y, model, interval, model.physical_constants()["k"]


def test_profile_likelihood_warns_of_refits_still_improving():
    # Refits stopped while their loss still fell clearly put the profile
    # too high and the interval too narrow, silently (a refit at the
    # estimate that starts converged does not reveal it).
    t, y, model, (lo, hi), k = _fitted_decay()
    grid = [k - 1.3 * (k - lo), k, k + 1.3 * (hi - k)]
    converged = kh.profile_likelihood(model, "k", grid, t, y, epochs=20, batch_size=40)
    assert not converged.warnings
    model.compile(optimizer=keras.optimizers.SGD(0.005), loss="mse")
    with pytest.warns(UserWarning, match=r"still improving at their last epoch: at k = 0.678"):
        slow = kh.profile_likelihood(model, "k", grid, t, y, epochs=20, batch_size=40)
    assert slow.statistic[0] > converged.statistic[0] + 3.0
    assert slow.interval[1] - slow.interval[0] < converged.interval[1] - converged.interval[0]


def test_profile_takes_the_model_fit_where_a_refit_ends_above_it():
    # A fresh Adam of a large rate throws the fitted amplitude off in two
    # epochs: every refit ends far above the model's own fit with k moved
    # there, which bounds the profile from above. The interval excluded
    # the grid value next to the estimate, silently.
    t, y, model, (lo, hi), k = _fitted_decay()
    model.compile(optimizer=keras.optimizers.Adam(0.3), loss="mse")
    with pytest.warns(UserWarning, match=r"refits at k = 0.656.* ended above the model's own fit"):
        prof = kh.profile_likelihood(model, "k", [k - 0.05, k + 0.002, k + 0.05], t, y, epochs=2,
                                     batch_size=40)
    assert prof.interval[0] < k + 0.002 < prof.interval[1]
    # Within the grid's resolution of the Laplace interval.
    assert prof.interval == pytest.approx((lo, hi), abs=0.01)


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
def wave(t, k):
    return k["A"] * keras.ops.cos(k["k"] * t)


def test_profile_likelihood_warns_about_a_gap():
    # Sampled at whole numbers, cos(k t) and cos((2 pi - k) t) are the same
    # curve: k = 1 and k = 2 pi - 1 fit equally well, values between do not.
    t = np.arange(30, dtype="float32")[:, None]
    y = (np.cos(t) + 0.01 * np.random.default_rng(0).standard_normal(t.shape)).astype("float32")
    inputs = keras.Input((1,))
    out = kh.ScientificLayer(wave, [kh.PhysicalConstant("A", 1.0), kh.PhysicalConstant("k", 1.0)],
                             name="law")(inputs)
    model = kh.HybridModel(inputs, out, sam=None)
    model.compile(optimizer="sgd", loss="mse")
    mirror = 2 * math.pi
    values = [0.99, 0.9999, 1.0001, 3.0, mirror - 1.0001, mirror - 0.9999, mirror - 0.99]
    with pytest.warns(UserWarning, match=r"rises above the threshold at k = 3 between"):
        prof = kh.profile_likelihood(model, "k", values, t, y, epochs=0)
    assert np.count_nonzero(prof.statistic <= prof.threshold) == 4
    lo, hi = prof.interval
    assert 0.99 < lo < 0.9999 and mirror - 0.9999 < hi < mirror - 0.99
    assert "not one interval" in str(prof)


def test_positive_constant_is_next_to_zero_only_below_its_scale():
    # A wide interval (a poorly determined rate) does not put the rate next
    # to 0; a rate driven to below 1 % of its declared magnitude does.
    t, y = _data()
    model = _model()
    layer = model.get_layer("law")
    layer.set_constant("A", 2.0)
    t_few = np.array([[0.0], [0.01], [0.02]], "float32")   # k poorly determined
    y_few = (2.0 * np.exp(-0.7 * t_few) + [[0.01], [-0.01], [0.0]]).astype("float32")
    layer.set_constant("k", 0.7)
    wide = kh.constant_uncertainty(model, t_few, y_few)
    assert wide.intervals["k"][1] > 100 * 0.7
    assert not any("bound" in w for w in wide.warnings)
    layer.set_constant("k", 0.005)   # declared 0.65: below 1 % of it
    near = kh.constant_uncertainty(model, t, y)
    assert any("k = 0.005 is at or next to its bound 0 (below 1% of its typical magnitude 0.65)" in w
               for w in near.warnings)


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
def decay_and_heat(t, k):
    """A concentration (order 1) and a temperature (order 300) of one reaction."""
    conc = k["C0"] * keras.ops.exp(-k["k"] * t)
    temp = 300.0 + k["h"] * (k["C0"] - conc)
    return keras.ops.concatenate([conc, temp], -1)


def _two_outputs(seed=0):
    t = np.linspace(0, 5, 50)[:, None].astype("float32")
    conc = np.exp(-0.8 * t)
    temp = 300.0 + 20.0 * (1.0 - conc)
    rng = np.random.default_rng(seed)
    y = np.concatenate([conc + 0.01 * rng.standard_normal(t.shape),
                        temp + 2.0 * rng.standard_normal(t.shape)], 1).astype("float32")
    inputs = keras.Input((1,))
    out = kh.ScientificLayer(decay_and_heat, [kh.PhysicalConstant("C0", 1.0, constraint="positive"),
                                              kh.PhysicalConstant("k", 0.8, constraint="positive"),
                                              kh.PhysicalConstant("h", 20.0)], name="law")(inputs)
    return t, y, kh.HybridModel(inputs, out, sam=None)


def _weighted_nls_stderr(t, y, c, w):
    """`sqrt(diag(s^2 (J^T W J)^-1))` of the two-output law, in NumPy (float64)."""
    t = t[:, 0].astype("float64")

    def f(c):
        conc = c[0] * np.exp(-c[1] * t)
        return np.concatenate([conc, 300.0 + c[2] * (c[0] - conc)])

    eps = 1e-6
    j = np.stack([(f(c + eps * e) - f(c - eps * e)) / (2 * eps) for e in np.eye(3)], 1)
    r = np.concatenate([y[:, 0], y[:, 1]]).astype("float64") - f(c)
    wv = np.concatenate([w[:, 0], w[:, 1]])
    s2 = np.sum(wv * r**2) / (len(r) - 3)
    return np.sqrt(np.diag(s2 * np.linalg.inv(j.T @ (wv[:, None] * j))))


def test_outputs_of_different_scales_are_reported_and_weights_fix_them():
    t, y, model = _two_outputs()
    result = kh.constant_uncertainty(model, t, y)
    pred = model.predict(t, verbose=0)
    rms = np.sqrt(np.mean((pred - y) ** 2, 0))
    assert result.output_noise_std["y[0]"] == pytest.approx(rms[0], rel=1e-4)
    assert result.output_noise_std["y[1]"] == pytest.approx(rms[1], rel=1e-4)
    warning = [w for w in result.warnings if "differ in scale (std. y[0]" in w]
    assert len(warning) == 1
    wide = result.noise_std / result.output_noise_std["y[0]"]
    assert f"informed mostly by y[0] may be up to {wide:.2g} times too wide" in warning[0]
    # Weighted by the inverse variances: one noise level fits, no warning,
    # and the classical weighted least-squares standard errors.
    w = np.broadcast_to(1.0 / np.array([0.01, 2.0]) ** 2, y.shape).astype("float32")
    weighted = kh.constant_uncertainty(model, t, y, sample_weight=w)
    assert not any("differ in scale" in m for m in weighted.warnings)
    expected = _weighted_nls_stderr(t, y, np.array([1.0, 0.8, 20.0]), w)
    # C0 and k are positive (log scale): the delta method gives the same first-order errors.
    for name, se in zip(["C0", "k", "h"], expected):
        assert weighted.stderr[name] == pytest.approx(se, rel=0.02)
    assert weighted.stderr["C0"] < result.stderr["C0"] / 10


def test_weights_per_output_of_a_dict_model():
    t, y, model = _two_outputs()
    inputs = keras.Input((1,))
    both = model(inputs)
    split = kh.HybridModel(inputs, {"conc": both[:, :1], "temp": both[:, 1:]}, sam=None)
    w = {"conc": np.full(len(t), 1e4, "float32"), "temp": np.full(len(t), 0.25, "float32")}
    as_dict = kh.constant_uncertainty(split, t, {"conc": y[:, :1], "temp": y[:, 1:]}, sample_weight=w)
    as_array = kh.constant_uncertainty(model, t, y, sample_weight=np.broadcast_to([1e4, 0.25], y.shape))
    assert as_dict.stderr == pytest.approx(as_array.stderr, rel=1e-4)
    assert set(as_dict.output_noise_std) == {"conc", "temp"}
    with pytest.raises(ValueError, match=r"`sample_weight` given per output must have the structure of `y`"):
        kh.constant_uncertainty(split, t, {"conc": y[:, :1], "temp": y[:, 1:]}, sample_weight=[w["conc"]])


def test_dict_targets_of_a_list_output_model_pair_by_output_name():
    # Keras pairs dict targets with a list of outputs by name; flattening
    # both paired them in sorted-key order (conc, temp) against the list's
    # order (temp, conc): each prediction met the other output's targets.
    t, y, model = _two_outputs()
    inputs = keras.Input((1,))
    both = model(inputs)
    temp = keras.layers.Identity(name="temp")(both[:, 1:])
    conc = keras.layers.Identity(name="conc")(both[:, :1])
    listed = kh.HybridModel(inputs, [temp, conc], sam=None)
    w = [np.full(len(t), 0.25, "float32"), np.full(len(t), 1e4, "float32")]
    by_list = kh.constant_uncertainty(listed, t, [y[:, 1:], y[:, :1]], sample_weight=w)
    by_name = kh.constant_uncertainty(listed, t, {"conc": y[:, :1], "temp": y[:, 1:]},
                                      sample_weight={"conc": w[1], "temp": w[0]})
    assert by_name.stderr == pytest.approx(by_list.stderr, rel=1e-4)
    assert by_name.output_noise_std["conc"] == pytest.approx(by_list.output_noise_std["y[1]"], rel=1e-4)
    with pytest.raises(ValueError, match=r"keyed by the model's output names.*\['temp', 'conc'\]"
                                         r".*keys \['a', 'b'\]"):
        kh.constant_uncertainty(listed, t, {"a": y[:, :1], "b": y[:, 1:]})
    with pytest.raises(ValueError, match=r"one target array per output .* 2 output\(s\).* 1 array"):
        kh.constant_uncertainty(listed, t, y[:, :1])
    with pytest.raises(ValueError, match=r"one target array per output .* 3 array"):
        kh.constant_uncertainty(listed, t, [y[:, :1]] * 3)
    # Outputs of different shapes: `fit`'s shape check compared the
    # sorted targets with the listed outputs and refused a valid fit.
    shaped = kh.HybridModel(inputs, [keras.layers.Identity(name="state")(both), conc], sam=None)
    shaped.compile(optimizer="adam", loss="mse")
    shaped.fit(t, {"conc": y[:, :1], "state": y}, epochs=1, verbose=0)


def test_a_loss_other_than_the_squared_error_is_named():
    t, y = _data()
    model = _model()
    assert not any("compiled with the loss" in w for w in kh.constant_uncertainty(model, t, y).warnings)
    model.compile(optimizer="sgd", loss=keras.losses.Huber())
    huber = kh.constant_uncertainty(model, t, y)
    assert any("compiled with the loss Huber: the intervals are those of a squared-error fit" in w
               for w in huber.warnings)
    model.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError())
    assert not any("compiled with the loss" in w for w in kh.constant_uncertainty(model, t, y).warnings)


def test_results_round_trip_through_json():
    import json

    t, y = _data()
    model = _model(network=True)
    result = kh.constant_uncertainty(model, t, y)
    back = kh.ConstantUncertainty.from_dict(json.loads(json.dumps(result.to_dict())))
    assert str(back) == str(result)
    assert back.intervals == result.intervals and isinstance(back.intervals["k"], tuple)
    np.testing.assert_array_equal(back.correlation, result.correlation)
    assert back.output_noise_std == result.output_noise_std
    assert back.covers({"k": 0.7}) == result.covers({"k": 0.7})
    prof = kh.profile_likelihood(model, "k", [0.6, 0.7, 0.8], t, y, epochs=0)
    prof_back = kh.ProfileLikelihood.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert str(prof_back) == str(prof)
    np.testing.assert_array_equal(prof_back.statistic, prof.statistic)
    assert prof_back.interval == prof.interval and prof_back.flat == prof.flat


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
class OwnCompile(kh.HybridModel):
    """A model that overrides `compile` (Keras's `compile_from_config` skips such models)."""

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)


def test_profile_refits_a_model_that_overrides_compile():
    t, y = _data()
    inputs = keras.Input((1,))
    out = kh.ScientificLayer(decay, [kh.PhysicalConstant("A", 2.0), kh.PhysicalConstant("k", 0.7)],
                             name="law")(inputs)
    model = OwnCompile(inputs, out, sam=None)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    prof = kh.profile_likelihood(model, "k", [0.6, 0.8], t, y, epochs=3, batch_size=40)
    # The refits moved A (the optimizer was rebuilt): RSS below the fixed-A values.
    fixed = kh.profile_likelihood(model, "k", [0.6, 0.8], t, y, epochs=0)
    assert np.all(prof.rss < fixed.rss)


def test_profile_grid_chosen_from_the_laplace_interval():
    # At the least-squares fit of a physics-only law: a grid of 7 values
    # evenly spaced in log k, 1.5 Laplace half-widths on each side; the
    # profile crosses its threshold inside it, close to the Laplace interval.
    t, y = _data()
    model = _model()
    layer = model.get_layer("law")
    t64, y64 = t[:, 0].astype("float64"), y[:, 0].astype("float64")
    c = np.array([1.9, 0.65])
    for _ in range(50):
        e = np.exp(-c[1] * t64)
        c = c + np.linalg.lstsq(np.stack([e, -c[0] * t64 * e], 1), y64 - c[0] * e, rcond=None)[0]
    layer.set_constant("A", float(c[0]))
    layer.set_constant("k", float(c[1]))
    laplace = kh.constant_uncertainty(model, t, y)
    prof = kh.profile_likelihood(model, "k", 7, t, y, epochs=30, batch_size=40)
    assert prof.values.size == 7
    logs = np.log(prof.values)
    np.testing.assert_allclose(np.diff(logs), np.diff(logs)[0], rtol=1e-4)
    half = 1.5 * laplace.quantile * math.sqrt(laplace.raw_covariance[1, 1])
    assert logs[-1] - math.log(c[1]) == pytest.approx(half, rel=1e-3)
    lo, hi = prof.interval
    assert prof.values[0] < lo < c[1] < hi < prof.values[-1]
    assert (lo, hi) == pytest.approx(laplace.intervals["k"], rel=0.05)
    with pytest.raises(ValueError, match=r"`values` as a count must be at least 3"):
        kh.profile_likelihood(model, "k", 2, t, y, epochs=0)


@pytest.mark.parametrize("dtype", [None, "float64"])
def test_data_in_chunks_give_the_one_chunk_result(dtype):
    # `batch_size` below the data size: the data-space product J D J^T u
    # couples every chunk with every other (a product per chunk alone is
    # block-diagonal, and its intervals too narrow).
    t, y = _data()
    keras.utils.set_random_seed(3)
    model = _model(dtype=dtype, network=True)
    one = kh.constant_uncertainty(model, t, y, method="cg", cg_tol=1e-8)
    chunks = kh.constant_uncertainty(model, t, y, method="cg", cg_tol=1e-8, batch_size=7)
    assert one.solver.get("compiled") is True
    assert chunks.solver.get("compiled") is False
    assert chunks.stderr == pytest.approx(one.stderr, rel=1e-3)
    dense = kh.constant_uncertainty(model, t, y, method="dense", batch_size=7)
    assert dense.stderr["k"] == pytest.approx(kh.constant_uncertainty(model, t, y, method="dense").stderr["k"],
                                              rel=1e-5)


@pytest.mark.parametrize("weights, match", [
    # A NumPy broadcasting error, naming neither argument.
    (np.ones(10), r"one weight per sample .* shape \(10,\) for y of shape \(40, 1\)"),
    (np.r_[np.ones(39), -1.0], r"finite and >= 0.*1 such value\(s\), the first -1\.0"),
    (np.full(40, np.nan), r"40 such value\(s\), the first nan"),
])
def test_bad_sample_weights_are_named(weights, match):
    t, y = _data()
    model = _model()
    with pytest.raises(ValueError, match=match):
        kh.constant_uncertainty(model, t, y, sample_weight=weights)


def test_profile_values_that_are_not_finite_are_named():
    t, y = _data()
    model = _model()
    with pytest.raises(ValueError, match=r"all finite. Received: values=\[nan, 0.5, 0.6\]"):
        kh.profile_likelihood(model, "k", [np.nan, 0.5, 0.6], t, y, epochs=1)


def test_a_profile_that_does_not_close_or_warns_caps_the_verdict():
    # Only a flat profile entered the verdict: one open on a side, or whose
    # refits had not converged, left "identified" standing.
    from keras_hybrid.diagnostics.results import ProfileLikelihood

    t, y = _data()
    model = _model()
    model.fit(t, y, epochs=300, batch_size=40, verbose=0)
    assert kh.constant_uncertainty(model, t, y).verdicts == {"A": "identified", "k": "identified"}

    def profile(name, interval, warnings=()):
        return ProfileLikelihood(name=name, interval=interval, flat=False, warnings=list(warnings))

    result = kh.constant_uncertainty(model, t, y, profiles=[profile("k", (0.0, 0.8)),
                                                            profile("A", (1.9, 2.1), ["refits"])])
    assert result.verdicts == {"A": "weakly identified", "k": "weakly identified"}
    assert any("does not close within k's domain" in note for note in result.notes["k"])
    assert any("its profile warns" in note for note in result.notes["A"])
    closed = kh.constant_uncertainty(model, t, y, profiles=[profile("k", (0.6, 0.8))])
    assert closed.verdicts["k"] == "identified"


def test_a_physics_only_fit_stopped_early_is_flagged_and_capped():
    # A fit stopped away from the least-squares minimum came out
    # "identified" with an interval that excluded both the truth and the
    # optimum. A Gauss-Newton step from it measures how far it is.
    t, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(t, y, epochs=3, batch_size=40, verbose=0)
    early = kh.constant_uncertainty(model, t, y)
    assert any("not at the least-squares minimum" in w for w in early.warnings)
    assert set(early.verdicts.values()) == {"weakly identified"}
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(t, y, epochs=300, batch_size=40, verbose=0)
    converged = kh.constant_uncertainty(model, t, y)
    assert not any("least-squares minimum" in w for w in converged.warnings)
    assert converged.verdicts == {"A": "identified", "k": "identified"}


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
def decay_of_first_column(x, k):
    return k["A"] * keras.ops.exp(-k["k"] * x[:, :1])


def test_a_hybrid_fit_stopped_early_is_flagged_and_capped():
    """The same check with a network: the step refits the weights too
    (damped by their prior). A network of a second input supplies an
    unmodelled term, so the data pin the constants; after 40 epochs `A`
    came out "identified" with an interval excluding the truth (2.0)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 3.0, 40)
    z = rng.uniform(-1.0, 1.0, 40)
    y = (2.0 * np.exp(-0.8 * t) + 0.5 * np.tanh(2.0 * z) + 0.05 * rng.standard_normal(40))[:, None]
    x = np.stack([t, z], 1).astype("float32")
    y = y.astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    law = kh.ScientificLayer(decay_of_first_column, [
        kh.PhysicalConstant("A", 1.0, constraint="positive"),
        kh.PhysicalConstant("k", 0.4, constraint="positive")])
    net = keras.Sequential([keras.layers.Dense(16, "tanh"), keras.layers.Dense(1)])
    model = kh.HybridModel(inputs, law(inputs) + net(inputs[:, 1:]), sam=None)
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss="mse")
    model.fit(x, y, epochs=40, batch_size=40, verbose=0)
    early = kh.constant_uncertainty(model, x, y)
    assert any("not at the least-squares minimum" in w and "network's weights moving" in w
               for w in early.warnings), early.warnings
    assert early.verdicts["A"] == "weakly identified", str(early)
    # The same from conjugate gradients' solves (their solutions give `M^-1 J_c`).
    early_cg = kh.constant_uncertainty(model, x, y, method="cg", cg_tol=1e-6)
    assert early_cg.verdicts["A"] == "weakly identified", str(early_cg)
    model.fit(x, y, epochs=400, batch_size=40, verbose=0)
    converged = kh.constant_uncertainty(model, x, y)
    assert not any("least-squares minimum" in w for w in converged.warnings)
    converged_cg = kh.constant_uncertainty(model, x, y, method="cg", cg_tol=1e-6)
    assert not any("least-squares minimum" in w for w in converged_cg.warnings)
    assert converged.verdicts == {"A": "identified", "k": "identified"}
    assert converged.covers({"A": 2.0, "k": 0.8}) == {"A": True, "k": True}


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
def resistance_law(i, c):
    return c["R"] * i


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
class _TwoUnnamedLaws(keras.layers.Layer):
    """Two `ScientificLayer`s with automatic names and a constant `R` each."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = kh.ScientificLayer(resistance_law, [kh.PhysicalConstant("R", 1.0)])
        self.second = kh.ScientificLayer(resistance_law, [kh.PhysicalConstant("R", 2.0)])

    def call(self, x):
        return self.first(x) + self.second(x * x)


def test_profile_of_a_constant_keyed_by_an_automatic_layer_name():
    # The copy refitted for the profile names its layers anew
    # (scientific_layer_2, ...): the key given must still mean the layer
    # the user's model calls so. It was refused as unknown.
    x = np.linspace(0, 1, 20)[:, None].astype("float32")
    y = (1.5 * x + 2.5 * x * x).astype("float32")
    inputs = keras.Input((1,))
    model = keras.Model(inputs, _TwoUnnamedLaws(name="two")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    first, second = model.get_layer("two").first, model.get_layer("two").second
    first.set_constant("R", 1.5)
    second.set_constant("R", 2.5)  # the least-squares fit
    keys = list(kh.physical_constants(model))
    assert keys == [f"{first.name}/R", f"{second.name}/R"]
    prof = kh.profile_likelihood(model, keys[1], [2.4, 2.5, 2.6], x, y, epochs=0)
    # Without refits the profile is the model's fit with the second R moved:
    # RSS = 0.1^2 sum(x^4) at R = 2.5 +- 0.1, 0 at the truth.
    expected = 0.01 * np.sum(x[:, 0].astype("float64") ** 4)
    np.testing.assert_allclose(prof.rss, [expected, 0.0, expected], rtol=1e-4, atol=1e-10)


def test_automatic_profile_grid_of_a_constant_next_to_its_bound():
    # Mapped back through float32, the grid's far raw values land on the
    # bound 1, which no constant can take: the grid stays inside.
    x = np.linspace(0, 1, 30)[:, None].astype("float32")
    y = (x + 0.01 * np.random.default_rng(0).standard_normal(x.shape)).astype("float32")
    inputs = keras.Input((1,))
    law = kh.ScientificLayer(resistance_law, [kh.PhysicalConstant("R", 0.5, constraint=(0.0, 1.0))],
                             name="bounded")
    model = keras.Model(inputs, law(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    law.set_constant("R", 1 - 2e-7)
    prof = kh.profile_likelihood(model, "R", 5, x, y, epochs=0)
    # (Values that coincide in float32 there are one value.)
    assert prof.values.size >= 3 and np.all((prof.values > 0) & (prof.values < 1))


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
def subject_decay(t, c):
    return c["A"] * keras.ops.exp(-c["k"] * t)


def _per_subject_model(subjects, one_hot):
    """`A exp(-k t)`, `k` per subject from an Embedding of the subject id,
    or from the same table as a Dense layer of one-hot ids."""
    t_in = keras.Input((1,))
    if one_hot:
        s_in = keras.Input((subjects,))
        k = keras.layers.Dense(1, use_bias=False, name="subject_k")(s_in)
    else:
        s_in = keras.Input((1,), dtype="int32")
        k = keras.layers.Embedding(subjects, 1, name="subject_k")(s_in)[:, 0, :]
    law = kh.ScientificLayer(subject_decay, [kh.PhysicalConstant("A", 1.0, constraint="positive"),
                                             kh.PhysicalConstant("k", 0.4, trainable=False)], name="law")
    model = kh.HybridModel([t_in, s_in], law(t_in, constants={"k": k}), sam=None)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


@pytest.mark.parametrize("method", ["dense", "cg"])
def test_uncertainty_of_a_model_with_an_embedding_equals_its_dense_twin(method):
    # An Embedding's gradients are sparse (`tf.IndexedSlices`): the report
    # raised an AttributeError. The same model written with one-hot inputs
    # through a Dense layer (dense gradients) must give the same interval.
    subjects, per_subject = 5, 8
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(subjects), per_subject)
    t = np.tile(np.linspace(0, 5, per_subject), subjects).astype("float32")[:, None]
    k_true = rng.uniform(0.2, 0.6, subjects)
    y = (2.0 * np.exp(-k_true[ids][:, None] * t) + 0.01 * rng.standard_normal(t.shape)).astype("float32")
    sparse = _per_subject_model(subjects, one_hot=False)
    sparse.get_layer("subject_k").embeddings.assign(np.full((subjects, 1), 0.4, "float32"))
    sparse.fit([t, ids[:, None]], y, batch_size=len(t), epochs=150, verbose=0)
    dense = _per_subject_model(subjects, one_hot=True)
    dense.set_weights(sparse.get_weights())
    one_hot = np.eye(subjects, dtype="float32")[ids]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = kh.constant_uncertainty(sparse, [t, ids[:, None]], y, method=method)
        twin = kh.constant_uncertainty(dense, [t, one_hot], y, method=method)
    assert got.estimates["A"] == pytest.approx(2.0, rel=0.02)
    assert got.intervals["A"] == pytest.approx(twin.intervals["A"], rel=1e-3)


def test_a_model_that_reproduces_every_value_has_no_interval(monkeypatch):
    # Zero residuals: intervals of width 0 and "identified" (physics
    # only), a ZeroDivisionError with an L2 prior, a LinAlgError with
    # conjugate gradients.
    t, _ = _data()
    model = _model()
    exact = model.predict(t, verbose=0)
    for kwargs in ({}, {"method": "cg"}):
        with pytest.raises(ValueError, match=r"reproduces every observed value exactly \(residual sum"):
            kh.constant_uncertainty(model, t, exact, **kwargs)

    def no_refit(*args, **kwargs):
        raise AssertionError("the profile refitted before checking the residuals")

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "fit", no_refit)
        with pytest.raises(ValueError, match=r"reproduces every observed value exactly"):
            kh.profile_likelihood(model, "k", [0.6, 0.65, 0.7], t, exact, epochs=1)
    with pytest.raises(ValueError, match=r"reproduces every observed value exactly"):
        un.profile_interval([0.6, 0.7], [0.0, 1.0], 40)


def test_prior_precision_and_level_are_checked_before_any_work():
    t, y = _data()
    model = _model(network=True)
    with pytest.raises(ValueError, match=r'is `network="fixed"`\)\. Received: prior_precision=inf'):
        kh.constant_uncertainty(model, t, y, prior_precision=float("inf"))
    for level in (None, "0.9"):
        with pytest.raises(ValueError, match=rf"`level` must be a number in \(0, 1\). Received: level={level!r}"):
            kh.constant_uncertainty(model, t, y, level=level)
    with pytest.raises(ValueError, match=r"Received: dof=nan"):
        un.t_quantile(0.95, float("nan"))
    # A NumPy scalar is a number.
    given = kh.constant_uncertainty(model, t, y, prior_precision=np.float32(2.0))
    assert given.stderr == kh.constant_uncertainty(model, t, y, prior_precision=2.0).stderr


@keras.saving.register_keras_serializable(package="test_diagnostics_inputs")
def two_proportional_outputs(x, c):
    return keras.ops.concatenate([c["a"] * x, c["b"] * x], -1)


def test_a_noise_free_output_that_a_constant_matches_is_kept():
    # y[1] = b x without noise, b at 2.0: it was dropped as "reproduced
    # exactly" like an echoed initial state, and `b` came out "not
    # identified", with "the data carry no information on b".
    inputs = keras.Input((1,))
    law = kh.ScientificLayer(two_proportional_outputs,
                             [kh.PhysicalConstant("a", 1.0), kh.PhysicalConstant("b", 1.0)])
    model = keras.Model(inputs, law(inputs))
    x = np.linspace(-2, 2, 20)[:, None].astype("float32")
    noisy = 1.5 * x + 0.1 * np.random.default_rng(0).normal(size=x.shape)
    y = np.concatenate([noisy, 2.0 * x], 1).astype("float32")
    xd, yd = x[:, 0].astype("float64"), y[:, 0].astype("float64")
    a = float(xd @ yd / (xd @ xd))
    law.set_constant("a", a)
    law.set_constant("b", 2.0)
    result = kh.constant_uncertainty(model, x, y)
    assert result.exactly_reproduced == {} and result.n == 40
    # Least squares pooled over the 40 values: the same s / sqrt(Sxx) for both.
    s = math.sqrt(np.sum((yd - a * xd) ** 2) / (40 - 2))
    assert result.stderr["b"] == pytest.approx(s / math.sqrt(xd @ xd), rel=1e-4)
    assert result.verdicts["b"] == "identified"


def test_dense_refuses_a_large_network_before_the_data_go_through_the_model(monkeypatch):
    # The refusal came after two passes of the data through the model,
    # which for a 10,000-step ODE run eagerly took minutes.
    from keras_hybrid.diagnostics import laplace

    def no_data_pass(*args):
        raise AssertionError("the data went through the model first")

    inputs = keras.Input((1,))
    law = kh.ScientificLayer(decay, [kh.PhysicalConstant("A", 1.9), kh.PhysicalConstant("k", 0.65)])
    hidden = keras.layers.Dense(64, "tanh")(keras.layers.Dense(64, "tanh")(inputs))
    model = keras.Model(inputs, keras.layers.Add()([law(inputs), keras.layers.Dense(1)(hidden)]))
    t, y = _data()
    monkeypatch.setattr(laplace, "_checked_data", no_data_pass)
    with pytest.raises(ValueError, match=r"would build a Jacobian of n x p = n x 4355 with 4353 "
                                         r"network weights; the limits are"):
        kh.constant_uncertainty(model, t, y, method="dense")
