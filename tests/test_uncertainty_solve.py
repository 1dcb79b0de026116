"""The compiled data-space solve of `constant_uncertainty(method="cg")`:
agreement with the dense Schur complement on small models, with the host
iteration, and the Gauss / Gauss-Radau bracket of the information."""

import numpy as np
import pytest

import keras
import tensorflow as tf
import keras_hybrid as kh
from keras_hybrid import _data_space
from keras_hybrid import diagnostics as dg
from keras_hybrid import uncertainty as un
from keras_hybrid.systems import pendulum


def _small_pendulum():
    times, y0, obs = pendulum.simulate(n_trajectories=8, n_steps=12, seed=1)
    model = pendulum.build_model(times, hidden=4, seed=0, w0_init=0.9)
    return model, y0, obs


@pytest.mark.parametrize("jit_after", [2, 10**6])
def test_compiled_solve_matches_the_dense_schur_complement_on_an_ode_hybrid(jit_after, monkeypatch):
    # An RK4 ODE with a 2-4-4-2 network inside (42 weights): the compiled
    # iteration (reverse pass differentiated in its cotangent, through the
    # ODE loop) against the Schur complement of the dense Gram matrix at
    # the same shift alpha sigma^2; with the product XLA-compiled from its
    # second call, and as a plain graph throughout.
    monkeypatch.setattr(_data_space, "JIT_AFTER", jit_after)
    model, y0, obs = _small_pendulum()
    dense = kh.constant_uncertainty(model, y0, obs, method="dense", prior_precision=1.0)
    cg = kh.constant_uncertainty(model, y0, obs, method="cg", prior_precision=1.0, cg_tol=1e-9)
    assert cg.solver["compiled"]
    g = dense.gram
    expected = un.schur_information(g[:1, :1], g[:1, 1:], g[1:, 1:], cg.shift)
    np.testing.assert_allclose(cg.information_fixed, g[:1, :1], rtol=1e-4)
    np.testing.assert_allclose(cg.information_marginal, expected, rtol=1e-3)
    info = cg.solver["cg"][0]
    # The bracket holds the dense value, up to the float32 products (the
    # dense Gram matrix comes from float32 Jacobian columns too).
    assert info["quadratic"] <= expected[0, 0] * (1 + 1e-3)
    assert info["upper"] >= expected[0, 0] * (1 - 1e-3)
    assert cg.solver["xla"] == (jit_after == 2)


def test_compiled_and_host_iterations_agree(monkeypatch):
    model, y0, obs = _small_pendulum()
    compiled = kh.constant_uncertainty(model, y0, obs, method="cg", cg_tol=1e-3)
    monkeypatch.setattr(dg, "COMPILED_CG", False)
    host = kh.constant_uncertainty(model, y0, obs, method="cg", cg_tol=1e-3)
    assert compiled.solver["compiled"] and not host.solver["compiled"]
    np.testing.assert_allclose(compiled.information_marginal, host.information_marginal, rtol=2e-3)
    (lo, hi), (hlo, hhi) = compiled.intervals["w0"], host.intervals["w0"]
    assert lo == pytest.approx(hlo, rel=1e-3) and hi == pytest.approx(hhi, rel=1e-3)


def test_gauss_and_gauss_radau_bounds_bracket_the_quadratic_form():
    rng = np.random.default_rng(0)
    jw = rng.standard_normal((200, 40)) * np.geomspace(3, 1e-2, 40)
    m = np.eye(200) + jw @ jw.T  # eigenvalues >= 1
    b = jw @ rng.standard_normal(40) + 0.1 * rng.standard_normal(200)
    exact = b @ np.linalg.solve(m, b)
    _, info = un.conjugate_gradient(lambda v: m @ v, b, tol=1e-12, max_iter=300, quadratic=True,
                                    delay=300, eig_lower=1.0)
    lows, ups = np.array(info["lower_history"]), np.array(info["upper_history"])
    assert np.all(lows <= exact * (1 + 1e-9)) and np.all(ups >= exact * (1 - 1e-9))
    assert np.all(np.diff(lows) >= 0)
    assert info["lower"] == pytest.approx(exact, rel=1e-8)
    assert info["upper"] == pytest.approx(exact, rel=1e-8)
    # Stopped on the bracket (tol 1e-3, no delay rule): the lower bound is
    # within 1e-3 of the exact value, before the residual rule.
    _, info2 = un.conjugate_gradient(lambda v: m @ v, b, tol=1e-3, max_iter=300, quadratic=True,
                                     delay=300, eig_lower=1.0)
    assert info2["bracketed"] and info2["iterations"] < info["iterations"]
    assert 0 <= info2["upper"] - info2["lower"] <= 1e-3 * info2["lower"]
    assert exact * (1 - 1e-3) <= info2["lower"] <= exact
    assert info2["quadratic"] == pytest.approx(info2["lower"], rel=1e-8)
    # On the width q^(-1/2): the bracket bounds it to within 1 + tol.
    _, info3 = un.conjugate_gradient(lambda v: m @ v, b, tol=1e-3, max_iter=300, quadratic="width",
                                     delay=300, eig_lower=1.0)
    assert info3["bracketed"] and info3["iterations"] <= info2["iterations"]
    assert np.sqrt(info3["upper"] / info3["lower"]) <= 1 + 1e-3
    assert 1 <= np.sqrt(exact / info3["lower"]) <= 1 + 1e-3
    with pytest.raises(ValueError, match=r"Received: quadratic='both'"):
        un.conjugate_gradient(lambda v: m @ v, b, quadratic="both")
    with pytest.raises(ValueError, match=r"Received: eig_lower=0"):
        un.conjugate_gradient(lambda v: m @ v, b, quadratic=True, eig_lower=0)


def test_bad_solver_settings_name_argument_and_value():
    model, y0, obs = _small_pendulum()
    with pytest.raises(ValueError, match=r"Received: cg_tol=0"):
        kh.constant_uncertainty(model, y0, obs, method="cg", cg_tol=0)
    with pytest.raises(ValueError, match=r"Received: cg_max_iter=2.5"):
        kh.constant_uncertainty(model, y0, obs, method="cg", cg_max_iter=2.5)


def test_gauss_radau_bracket_closes_when_one_step_solves_exactly():
    # b is an eigenvector of M with eigenvalue eig_lower: the residual is 0
    # after one step, and the bracket's update divided 0 by 0.
    j = np.array([[0.0], [0.0], [1.0]])
    b = np.array([1.0, 2.0, 0.0])
    for quadratic in (True, "width"):
        _, info = un.conjugate_gradient(lambda v: j @ (j.T @ v), b, shift=1.0, quadratic=quadratic,
                                        eig_lower=1.0)
        assert info["quadratic"] == pytest.approx(5.0) and info["upper"] == pytest.approx(5.0)
        assert info["converged"]


def test_null_directions_do_not_depend_on_the_constants_units():
    # The same well-conditioned fit with constants in units 1e6 apart: a
    # null-direction test relative to the largest eigenvalue made the
    # smallest constant unbounded and the others conditional on it.
    x = np.random.default_rng(5).normal(size=(30, 3))
    scales = np.array([1e-6, 1.0, 1e6])
    a = (x * scales).T @ (x * scales)
    expected = np.linalg.inv(x.T @ x) / np.outer(scales, scales)
    np.testing.assert_allclose(un.covariance_from_information(a, 2.0), 2.0 * expected, rtol=1e-9)
    assert un.information_rank(a) == 3
    assert un.effective_parameters(a, np.zeros(3), 1.0) == pytest.approx(3.0)
    # A constant with no information stays unbounded, and only it.
    a[0, :] = a[:, 0] = 0.0
    cov = un.covariance_from_information(a, 1.0)
    assert np.all(np.isinf(cov[0])) and np.all(np.isfinite(cov[1:, 1:]))
    assert un.information_rank(a) == 2


@keras.saving.register_keras_serializable(package="test_uncertainty_solve")
def _proportional(x, c):
    return c["a"] * x


def test_a_cg_plateau_that_the_bracket_does_not_confirm_is_warned():
    # A constant beside a small network, noise 1e-4: the delay rule stops
    # after 19 iterations with the information still growing (the bracket
    # allows an interval 5.7 times narrower), and nothing said so.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,))
    law = kh.ScientificLayer(_proportional, [kh.PhysicalConstant("a", 1.0)])
    hidden = keras.layers.Dense(16, activation="tanh")(keras.layers.Dense(16, activation="tanh")(inputs))
    model = keras.Model(inputs, keras.layers.Add()([law(inputs), keras.layers.Dense(1)(hidden)]))
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (300, 1)).astype("float32")
    y = (x + model.predict(x, verbose=0) + 1e-4 * rng.normal(size=x.shape)).astype("float32")
    law.set_constant("a", 2.0)
    result = kh.constant_uncertainty(model, x, y, method="cg", prior_precision=1.0)
    (info,) = result.solver["cg"]
    assert info["converged"] and not info["bracketed"]
    narrower = np.sqrt(info["upper"] / info["lower"])
    assert narrower > 1.1
    assert any(f"up to {narrower:.3g} times narrower" in w for w in result.warnings), result.warnings


def test_the_model_is_never_run_eagerly(monkeypatch):
    # Eager calls run an ODE's solver loop op by op: on five trajectories
    # of 10,000 steps the data check, the echo check and the RSS took
    # 160 s each, against 2 s in a graph.
    eager = []
    call = kh.ODELayer.call

    def recording_call(self, *args, **kwargs):
        eager.append(tf.executing_eagerly())
        return call(self, *args, **kwargs)

    model, y0, obs = _small_pendulum()
    monkeypatch.setattr(kh.ODELayer, "call", recording_call)
    for method in ("dense", "cg"):
        kh.constant_uncertainty(model, y0, obs, method=method)
    assert eager and not any(eager)
