"""Checkpointed fixed-step solves: same values and gradients as the plain
loop (wrt the initial state, constants, network weights, a context, and
perturbed weights given by a StatelessScope as in a SAM step), under SAM,
XLA, saving and SavedModel export."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh
from keras_hybrid.systems import pendulum

F32 = dict(rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("checkpoint, substeps", [(1, 1), (4, 1), (7, 2), (50, 1)])
def test_odeint_values_and_gradients_match_plain(checkpoint, substeps):
    # y' = -k y + a sin(y): gradients wrt y0, a constant and a tf.Variable.
    t = np.linspace(0.0, 2.0, 21)  # 20 intervals: 7 leaves a remainder of 6
    k = tf.Variable(0.7, dtype=tf.float64)
    a = tf.constant(0.3, tf.float64)
    y0 = tf.constant([[1.0, -0.5], [0.2, 2.0]], tf.float64)

    def run(ck):
        with tf.GradientTape() as tape:
            tape.watch([a, y0])
            ys = kh.odeint(lambda t, y, a: -k * y + a * tf.sin(y), y0, t, substeps=substeps,
                           constants={"a": a}, checkpoint=ck)
            loss = tf.reduce_sum(ys * tf.cos(ys))
        return ys, tape.gradient(loss, [y0, a, k])

    ys_plain, g_plain = run(None)
    ys_ck, g_ck = run(checkpoint)
    np.testing.assert_array_equal(ys_ck.numpy(), ys_plain.numpy())
    for got, want in zip(g_ck, g_plain):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-14)


def test_odeint_gradient_matches_analytic_solution():
    # y' = -k y -> y(T) = y0 exp(-k T); dy(T)/dk = -T y(T)
    t = np.linspace(0.0, 1.5, 31)
    k = tf.constant(0.7, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(k)
        y = kh.odeint(lambda t, y, k: -k * y, tf.constant([1.0], tf.float64), t,
                      constants={"k": k}, checkpoint=4)[-1, 0]
    np.testing.assert_allclose(y.numpy(), np.exp(-0.7 * 1.5), rtol=1e-7)
    np.testing.assert_allclose(tape.gradient(y, k).numpy(), -1.5 * np.exp(-1.05), rtol=1e-7)


def test_the_backward_pass_re_integrates_at_most_two_segments_at_a_time():
    # With TensorFlow's default of 10 parallel iterations, the backward
    # loop re-integrated up to ten segments ahead, each holding its stage
    # values: memory grew with the trajectory length. Two overlap the next
    # segment's re-integration with this one's backward pass (the figures
    # are in benchmarks/README.md; a memory figure is no unit test).
    t = np.linspace(0.0, 1.0, 41)

    @tf.function
    def gradient(k):
        with tf.GradientTape() as tape:
            tape.watch(k)
            y = kh.odeint(lambda t, y, k: -k * y, tf.ones((2, 1)), t, constants={"k": k},
                          checkpoint=4)
        return tape.gradient(y, k)

    graph = gradient.get_concrete_function(tf.constant(0.7)).graph.as_graph_def()
    segment_loops = [node for node in graph.node if node.op in ("While", "StatelessWhile")]
    assert segment_loops  # the forward segment loop and its gradient
    assert {node.attr["parallel_iterations"].i for node in segment_loops} == {2}


def _model(times, checkpoint, sam=None, context_size=0):
    """The pendulum hybrid (same initial weights whatever `checkpoint`)."""
    init = keras.initializers.GlorotUniform
    correction = keras.Sequential(
        [keras.layers.Dense(16, "tanh", kernel_initializer=init(1)),
         keras.layers.Dense(2, kernel_initializer=init(2))]
    )
    layer = kh.ODELayer(
        pendulum.frictionless_pendulum,
        [kh.PhysicalConstant("w0", 0.5, unit="rad/s", constraint="positive")],
        times=times, correction=correction, context_size=context_size, checkpoint=checkpoint,
    )
    y0 = keras.Input((2,))
    if context_size:
        context = keras.Input((context_size,))
        return kh.HybridModel([y0, context], layer(y0, context=context), sam=sam)
    return kh.HybridModel(y0, layer(y0), sam=sam)


def _data(n=8, steps=40, seed=0):
    times, y0, observed = pendulum.simulate(n_trajectories=n, n_steps=steps, seed=seed)
    return times, y0, observed


def _gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
    return loss, tape.gradient(loss, model.trainable_variables)


def test_layer_gradients_wrt_constants_and_weights_match_plain():
    times, y0, observed = _data()
    plain, checkpointed = _model(times, None), _model(times, 6)
    loss_p, g_p = _gradients(plain, y0, observed)
    loss_c, g_c = _gradients(checkpointed, y0, observed)
    assert len(g_c) == 5  # w0 (raw) and two Dense layers
    assert all(g is not None and np.any(g.numpy() != 0) for g in g_c)
    np.testing.assert_allclose(loss_c.numpy(), loss_p.numpy(), rtol=1e-6)
    for got, want in zip(g_c, g_p):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **F32)


def test_gradients_wrt_perturbed_weights_in_stateless_scope_match_plain(
        gradients_at_perturbed_weights):
    # SAM's second pass: the weights are tensors given by a StatelessScope.
    times, y0, observed = _data()
    grads = []
    for checkpoint in (None, 5):
        model = _model(times, checkpoint)
        grads.append(gradients_at_perturbed_weights(
            model, lambda: tf.reduce_mean((model(y0, training=True) - observed) ** 2)))
    for got, want in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **F32)
        assert np.any(got.numpy() != 0)


def test_gradient_wrt_context_matches_plain():
    times, y0, observed = _data()
    context = tf.constant(np.linspace(-1, 1, 8 * 3).reshape(8, 3), tf.float32)
    grads = []
    for checkpoint in (None, 9):
        model = _model(times, checkpoint, context_size=3)
        with tf.GradientTape() as tape:
            tape.watch(context)
            loss = tf.reduce_mean((model([tf.constant(y0), context], training=True) - observed) ** 2)
        grads.append(tape.gradient(loss, [context] + model.trainable_variables))
    assert np.any(grads[1][0].numpy() != 0)
    for got, want in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **F32)


def test_sam_steps_under_xla_match_plain():
    # Plain mode in graph mode (quicker to compile) against checkpointed
    # SAM steps under XLA.
    times, y0, observed = _data(n=16, steps=19)
    sam = kh.SAM(rho=0.3, perturb="neural")
    weights = []
    for checkpoint in (None, 6):
        model = _model(times, checkpoint, sam=sam)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse",
                      jit_compile=checkpoint is not None)
        model.fit(y0, observed, batch_size=8, epochs=1, shuffle=False, verbose=0)
        weights.append([v.numpy() for v in model.trainable_variables])
    moved = [np.abs(a - b).max() for a, b in zip(weights[0], _model(times, None).get_weights())]
    assert max(moved) > 1e-3
    for got, want in zip(weights[1], weights[0]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_keras_file(tmp_path):
    times, y0, _ = _data(n=4, steps=12)
    model = _model(times, 5)
    layer = model.layers[-1]
    assert layer.get_config()["checkpoint"] == 5
    assert kh.ODELayer.from_config(layer.get_config()).checkpoint == 5
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[-1].checkpoint == 5
    np.testing.assert_allclose(loaded.predict(y0, verbose=0), model.predict(y0, verbose=0),
                               rtol=1e-6, atol=1e-7)


def test_saved_model_export(tmp_path):
    times, y0, _ = _data(n=4, steps=12)
    model = _model(times, 4)
    path = kh.export_saved_model(model, str(tmp_path / "served"))
    served = tf.saved_model.load(path)
    out = served.signatures["serve"](tf.constant(y0))["output_0"].numpy()
    np.testing.assert_allclose(out, model.predict(y0, verbose=0), rtol=1e-6, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="checkpoint=0"):
        kh.odeint(lambda t, y: -y, np.ones(1), [0.0, 1.0], checkpoint=0)
    with pytest.raises(ValueError, match="checkpoint=2.5"):
        kh.odeint(lambda t, y: -y, np.ones(1), [0.0, 1.0], checkpoint=2.5)
    with pytest.raises(ValueError, match="method='dopri5'"):
        kh.odeint(lambda t, y: -y, np.ones(1), [0.0, 1.0], method="dopri5", checkpoint=2)
    with pytest.raises(ValueError, match="checkpoint=None"):
        kh.odeint(lambda t, y: -y, np.ones(1), [0.0, 1.0], variables=[tf.Variable(1.0)])
    with pytest.raises(ValueError, match="checkpoint=True"):
        kh.ODELayer(pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 1.0)],
                    times=[0.0, 1.0], checkpoint=True)
    with pytest.raises(ValueError, match="method='bdf'"):
        kh.ODELayer(pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 1.0)],
                    times=[0.0, 1.0], method="bdf", checkpoint=3)


@keras.saving.register_keras_serializable(package="test_checkpoint")
def _growth(t, y, c):
    return c["k"] * y


def _dropout_layer(checkpoint, times=np.arange(13) * 0.1, **kwargs):
    correction = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5, seed=1, name="drop"),
                                   keras.layers.Dense(3, kernel_initializer="identity", use_bias=False)])
    return kh.ODELayer(_growth, [kh.PhysicalConstant("k", 0.1)], times=times,
                       correction=correction, checkpoint=checkpoint, **kwargs)


def test_dropout_in_a_checkpointed_correction_draws_new_masks_and_replays_them():
    # Every call and every interval draws new masks (the seed state used to
    # be restored at each segment: the same masks at every step), and the
    # backward pass integrates a segment again with the same masks: the
    # gradient is the forward pass's (checked by central differences).
    y0 = tf.ones((2, 3))
    layer = _dropout_layer(checkpoint=4)
    layer(y0)
    state = layer.correction.get_layer("drop").seed_generator.state
    kernel = layer.correction.layers[-1].kernel
    first, second = layer(y0, training=True), layer(y0, training=True)
    assert float(tf.reduce_max(tf.abs(first - second))) > 0.1
    growth = (first[0, 1:] / first[0, :-1]).numpy().round(4)
    assert len({tuple(row) for row in growth}) > 6  # masks differ between intervals
    start = state.numpy()

    def loss():
        state.assign(start)
        return tf.reduce_sum(layer(y0, training=True) ** 2)

    with tf.GradientTape() as tape:
        value = loss()
    gradient = tape.gradient(value, kernel).numpy()
    h = 1e-3
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        kernel.assign(tf.tensor_scatter_nd_add(kernel, [[i, j]], [h]))
        up = float(loss())
        kernel.assign(tf.tensor_scatter_nd_add(kernel, [[i, j]], [-2 * h]))
        down = float(loss())
        kernel.assign(tf.tensor_scatter_nd_add(kernel, [[i, j]], [h]))
        assert gradient[i, j] == pytest.approx((up - down) / (2 * h), rel=2e-2)
    # Segments of any length see the same masks.
    others = []
    for checkpoint in (1, 12):
        other = _dropout_layer(checkpoint)
        other(y0)
        other.set_weights(layer.get_weights())
        other.correction.get_layer("drop").seed_generator.state.assign(start)
        others.append(other(y0, training=True))
    state.assign(start)
    reference = layer(y0, training=True)
    for other in others:
        np.testing.assert_allclose(other, reference, rtol=1e-6)


def test_random_layers_are_refused_in_adaptive_training():
    layer = _dropout_layer(None, method="dopri5")
    y0 = tf.ones((2, 3))
    layer(y0, training=False)  # no draws: fine
    with pytest.raises(ValueError, match=r"method='dopri5' cannot train a correction with random layers \(\['drop'\]\)"):
        layer(y0, training=True)


def test_seed_room_per_interval_grows_with_the_draws_an_interval_takes(monkeypatch):
    # An interval of 3 rk4 steps draws 12 times, more than the room of
    # SEED_STRIDE (made 8 here to keep the test small): the next interval
    # must start past them (or its masks repeat the previous interval's last
    # ones), and the next call past every interval.
    from keras_hybrid import ode

    monkeypatch.setattr(ode, "SEED_STRIDE", 8)
    substeps, stages, intervals = 3, 4, 12
    layer = _dropout_layer(checkpoint=4, substeps=substeps)
    y0 = tf.ones((2, 3))
    layer(y0)
    state = layer.correction.get_layer("drop").seed_generator.state
    start = state.numpy().copy()
    layer(y0, training=True)
    assert state.numpy()[1] - start[1] >= intervals * substeps * stages


def test_sam_trains_a_correction_with_dropout_inside_the_solver_loop():
    # Without checkpointing, the dropout seeds advance inside the solver's
    # loop: SAM's perturbed pass read their advanced value out of the loop
    # (an InaccessibleTensorError). Each pass draws once per stage of
    # every step, 12 intervals x 4 stages, and the seeds advance past both.
    layer = _dropout_layer(checkpoint=None)
    inputs = keras.Input((3,))
    model = kh.HybridModel(inputs, layer(inputs), sam=kh.SAM(rho=0.1))
    model.compile(optimizer="sgd", loss="mse")
    y0 = np.ones((4, 3), "float32")
    state = layer.correction.get_layer("drop").seed_generator.state
    start = state.numpy().copy()
    model.fit(y0, np.ones((4, 13, 3), "float32"), batch_size=4, epochs=2, verbose=0)
    assert state.numpy()[1] - start[1] == 2 * (2 * 12 * 4)
    assert np.all(np.isfinite(model.physical_constants()["k"]))
