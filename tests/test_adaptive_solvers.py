"""Adaptive (TFP) solves inside an `ODELayer`: the correction's weights,
also when a SAM step gives them as perturbed tensors, and a context from an
encoder get the gradients the fixed-step loop gives them. TFP's adjoint
differentiates only its inputs and the variables it sees read, so these
travel with the solve's constants."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh

TIMES = np.linspace(0.0, 1.0, 5)
# dopri5 at rtol 1e-8 against RK4 with 20 steps per interval, in float32.
TOL = dict(rtol=1e-4, atol=1e-6)


@keras.saving.register_keras_serializable(package="test_adaptive_solvers")
def decay_with_correction(t, y, c):
    return -c["k"] * y


def _data():
    y0 = np.linspace(0.5, 2.0, 8)[:, None].astype("float32")
    shape = np.exp(-0.8 * TIMES) + 0.1 * np.sin(3 * TIMES)
    return y0, (y0[:, None, :] * shape[None, :, None]).astype("float32")


def _model(method, context_size=0, sam=None):
    """Decay with a 1-4-1 correction; the same initial weights whatever
    `method`."""
    init = keras.initializers.GlorotUniform
    correction = keras.Sequential([
        keras.layers.Dense(4, "tanh", kernel_initializer=init(1)),
        keras.layers.Dense(1, kernel_initializer=init(2)),
    ])
    fixed_step = method == "rk4"
    layer = kh.ODELayer(
        decay_with_correction, [kh.PhysicalConstant("k", 0.5, constraint="positive")], times=TIMES,
        method=method, substeps=20 if fixed_step else 1, correction=correction,
        context_size=context_size, rtol=1e-8, atol=1e-10,
    )
    y0 = keras.Input((1,))
    if context_size:
        encoder = keras.layers.Dense(context_size, kernel_initializer=init(3), name="encoder")
        return kh.HybridModel(y0, layer(y0, context=encoder(y0)), sam=sam)
    return kh.HybridModel(y0, layer(y0), sam=sam)


def _loss(model, y0, observed):
    return tf.reduce_mean((model(y0, training=True) - observed) ** 2)


def test_gradients_wrt_perturbed_weights_match_the_fixed_step_loop(gradients_at_perturbed_weights):
    # SAM's second pass: the weights are tensors given by a StatelessScope.
    # Captured by TFP's solve, the network's came out as None. (BDF takes
    # the same path, `test_odeint_differentiates_a_perturbed_variable`;
    # its solve of this model takes a minute.)
    y0, observed = _data()
    grads = []
    for method in ("rk4", "dopri5"):
        model = _model(method)
        grads.append(gradients_at_perturbed_weights(model, lambda: _loss(model, y0, observed)))
    assert len(grads[1]) == 5  # k (raw) and two Dense layers
    for got, want in zip(grads[1], grads[0]):
        assert got is not None and np.any(got.numpy() != 0)
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)


def test_gradient_wrt_an_encoders_context_matches_the_fixed_step_loop():
    # The encoder's gradient came out as None: it would never train.
    y0, observed = _data()
    grads = []
    for method in ("rk4", "dopri5"):
        model = _model(method, context_size=2)
        with tf.GradientTape() as tape:
            loss = _loss(model, y0, observed)
        grads.append(tape.gradient(loss, model.trainable_variables))
    encoder_kernel = grads[1][0]
    assert encoder_kernel is not None and np.any(encoder_kernel.numpy() != 0)
    for got, want in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)


def test_sam_step_with_an_adaptive_solver_equals_the_hand_computed_step():
    # The hand step assigns the perturbed weights to the variables, which
    # TFP differentiates through its own variable tracking.
    y0, observed = _data()
    lr, rho = 0.1, 0.5
    model = _model("dopri5", sam=kh.SAM(rho=rho, perturb="neural"))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    variables = model.trainable_variables
    start = [v.numpy() for v in variables]

    def gradients():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(y0) - observed) ** 2)
        return [g.numpy() for g in tape.gradient(loss, variables)]

    neural = [not kh.is_physical_variable(v) for v in variables]
    g = gradients()
    norm = np.sqrt(sum(np.sum(gi**2) for gi, n in zip(g, neural) if n))
    for v, w, gi, n in zip(variables, start, g, neural):
        v.assign(w + rho * gi / norm if n else w)
    expected = [w - lr * gi for w, gi in zip(start, gradients())]
    for v, w in zip(variables, start):
        v.assign(w)

    model.fit(y0, observed, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for v, w, want in zip(variables, start, expected):
        assert np.abs(v.numpy() - w).max() > 1e-3  # every weight moved
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["dopri5", "bdf"])
def test_odeint_differentiates_a_perturbed_variable(method):
    # y' = -v y: y(1) = exp(-v), dy(1)/dv = -exp(-v), at the value the
    # StatelessScope gives, not the variable's.
    v = keras.Variable(0.7)
    perturbed = tf.constant(0.9)
    with tf.GradientTape() as tape:
        tape.watch(perturbed)
        with keras.StatelessScope(state_mapping=[(v, perturbed)]):
            y = kh.odeint(lambda t, y: -v * y, np.ones(1, "float32"), [0.0, 1.0],
                          method=method, variables=[v])[-1, 0]
    np.testing.assert_allclose(y.numpy(), np.exp(-0.9), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(y, perturbed).numpy(), -np.exp(-0.9), rtol=1e-4)


def test_odeint_takes_variables_with_an_adaptive_method_or_checkpoint_only():
    v = keras.Variable(0.7)
    with pytest.raises(ValueError, match=r"`variables` .* checkpoint=None and method='rk4'"):
        kh.odeint(lambda t, y: -v * y, np.ones(1), [0.0, 1.0], variables=[v])
