"""Multiple shooting: segment algebra, segments against a reference
integrator, continuity of the prediction, per-episode constants, SAM
groups, checkpointed segments, the penalty schedule, saving, and recovery
of a constant."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh
from keras_hybrid import shooting
from keras_hybrid.systems import pendulum

DT = 0.1


def _layer(n_times=41, w0=1.0, correction=None, **kwargs):
    return kh.ODELayer(
        pendulum.frictionless_pendulum,
        [kh.PhysicalConstant("w0", w0, unit="rad/s", constraint="positive")],
        times=np.arange(n_times) * DT,
        correction=correction,
        **kwargs,
    )


def _frictionless(y0, n_times, w0):
    """Reference float64 RK4 (one step per interval, as the layer)."""
    field = pendulum.damped_vector_field(np.asarray(w0)[..., None], 0.0)
    return pendulum.rk4_numpy(field, y0, np.arange(n_times) * DT, substeps=1)


def _observed(n=4, n_times=41, w0=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y0 = np.stack([rng.uniform(-1.5, 1.5, n), rng.uniform(-1, 1, n)], -1)
    return _frictionless(y0, n_times, w0).astype("float32")


def test_segment_algebra():
    np.testing.assert_array_equal(shooting.segment_starts(41, 10), [0, 10, 20, 30])
    segments = np.arange(2 * 3 * 4 * 1, dtype="float32").reshape(2, 3, 4, 1)
    stitched = np.asarray(shooting.stitch(segments))
    assert stitched.shape == (2, 3 * 3 + 1, 1)
    np.testing.assert_array_equal(stitched[0, :, 0], [0, 1, 2, 4, 5, 6, 8, 9, 10, 11])
    gaps = np.asarray(shooting.continuity_gaps(segments))
    np.testing.assert_array_equal(gaps[..., 0], [[1, 1], [1, 1]])  # start[s+1] - end[s]


def test_segments_match_reference_and_prediction_is_one_trajectory():
    # Noisy observations: each segment is integrated from the observation at
    # its start; the prediction integrates the whole horizon from the first.
    rng = np.random.default_rng(1)
    observed = _observed() + 0.05 * rng.standard_normal((4, 41, 2)).astype("float32")
    model = kh.MultipleShooting(_layer(w0=1.3), segment_length=10, sam=None)
    segments = np.asarray(model.segments(observed))
    assert segments.shape == (4, 4, 11, 2)
    for s in range(4):
        expected = _frictionless(observed[:, 10 * s].astype("float64"), 11, 1.3)
        np.testing.assert_allclose(segments[:, s], expected, rtol=1e-5, atol=1e-5)
    stitched = np.asarray(model(observed, training=True))
    np.testing.assert_allclose(stitched, shooting.stitch(segments), rtol=0, atol=0)
    gap = np.mean((segments[:, 1:, 0] - segments[:, :-1, -1]) ** 2)
    np.testing.assert_allclose(float(model.losses[0]), gap, rtol=1e-5)
    predicted = model.predict(observed, verbose=0)
    np.testing.assert_allclose(predicted, _frictionless(observed[:, 0].astype("float64"), 41, 1.3),
                               rtol=1e-5, atol=1e-5)


def test_exact_model_has_no_gaps():
    observed = _observed(w0=0.9)
    model = kh.MultipleShooting(_layer(w0=0.9), segment_length=8, sam=None)
    np.testing.assert_allclose(model(observed, training=True), observed, atol=2e-6)
    assert float(model.losses[0]) < 1e-11


def test_per_episode_constants_are_repeated_per_segment():
    w0 = np.array([0.7, 1.6], "float32")
    observed = np.concatenate([_observed(1, w0=0.7, seed=2), _observed(1, w0=1.6, seed=3)])
    model = kh.MultipleShooting(_layer(w0=1.0), segment_length=10, sam=None)

    def gap(values):
        model({"trajectories": observed, "constants": {"w0": values}}, training=True)
        return float(model.losses[0])

    assert gap(w0) < 1e-11
    assert gap(w0[::-1]) > 1e-3
    # An encoder giving the same constants.
    encoder = keras.layers.Lambda(lambda obs: {"w0": keras.ops.convert_to_tensor(w0)})
    with_encoder = kh.MultipleShooting(_layer(w0=1.0), segment_length=10, encoder=encoder, sam=None)
    np.testing.assert_allclose(with_encoder(observed, training=True), observed, atol=2e-6)


def test_a_scalar_constant_serves_every_sample_and_segment():
    # A 0-d per-call constant was repeated into shape (segments,) and
    # failed against the batch x segments states.
    observed = _observed(2, w0=1.3)
    model = kh.MultipleShooting(_layer(w0=1.0), segment_length=10, sam=None)
    model({"trajectories": observed, "constants": {"w0": tf.constant(1.3)}}, training=True)
    assert float(model.losses[0]) < 1e-11
    model({"trajectories": observed, "constants": {"w0": tf.constant(0.9)}}, training=True)
    assert float(model.losses[0]) > 1e-3


def test_a_uniform_grid_rounded_to_float32_is_uniform():
    # 0.01 steps up to 200 in float32 are 0.0099945 to 0.0100098 apart.
    times = (np.arange(20001) * 0.01).astype("float32")
    layer = kh.ODELayer(pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 1.0)], times=times)
    assert kh.MultipleShooting(layer, segment_length=100, sam=None).n_segments == 200
    uneven = np.concatenate([np.arange(50) * 0.01, 0.5 + np.arange(50) * 0.012])
    layer = kh.ODELayer(pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 1.0)], times=uneven)
    with pytest.raises(ValueError, match="uniform time grid"):
        kh.MultipleShooting(layer, segment_length=10, sam=None)


def test_fitted_initial_values_start_the_first_segment_and_train():
    # `ODELayer(initial_state=[...])`: prediction starts from the fitted
    # value, so training must too (it used to start from the data, and the
    # fitted value got no gradient and never moved).
    observed = _observed()
    layer = _layer(w0=1.0, initial_state=[kh.PhysicalConstant("theta0", 0.4), None])
    model = kh.MultipleShooting(layer, segment_length=10, sam=None, state_size=2)
    segments = np.asarray(model.segments(observed))
    first = np.stack([np.full(4, 0.4), observed[:, 0, 1]], -1)
    np.testing.assert_allclose(segments[:, 0], _frictionless(first, 11, 1.0), rtol=1e-5, atol=1e-5)
    for s in range(1, 4):  # later segments still start from the data
        np.testing.assert_allclose(segments[:, s, 0], observed[:, 10 * s], atol=0)
    # A fit moves theta0 to the first observed angle (shared by the 4 here).
    same_start = np.repeat(_observed(1, seed=5), 4, axis=0)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit(same_start, same_start, epochs=150, verbose=0)
    np.testing.assert_allclose(model.physical_constants()["theta0"], same_start[0, 0, 0], atol=0.01)


def test_trainable_states_start_at_data_and_are_excluded_from_sam():
    observed = _observed()
    data = kh.MultipleShooting(_layer(w0=1.2), segment_length=10, sam=None)
    trainable = kh.MultipleShooting(_layer(w0=1.2), segment_length=10, initial_states="trainable",
                                    n_trajectories=4, sam=kh.SAM(rho=0.3))
    x = {"trajectories": observed, "index": np.arange(4)}
    np.testing.assert_allclose(trainable(x, training=True), data(observed, training=True), atol=0)
    offsets = trainable.offsets.offsets
    assert tuple(offsets.shape) == (4, 4, 2)
    assert trainable.sam.is_excluded(offsets.path)
    assert not trainable.sam.is_excluded(trainable.layer.weights[0].path)
    # Offsets move the segment starts: a gradient reaches them.
    with tf.GradientTape() as tape:
        trainable({"trajectories": tf.constant(observed), "index": tf.range(4)}, training=True)
        loss = trainable.losses[0]
    grad = tape.gradient(loss, offsets.value)
    # Dense, not `IndexedSlices` (a gather's gradient): with those a SAM step
    # under XLA was about 100x slower.
    assert not isinstance(grad, tf.IndexedSlices)
    grad = grad.numpy()
    assert np.abs(grad[:, 1:]).min() > 0  # every later segment start moves its gap


def test_checkpointed_segments_give_the_plain_gradients():
    # checkpoint=4 re-integrates the segments of 10 intervals in stretches
    # of 4, 4 and 2: the loss and its gradient equal the plain loop's.
    rng = np.random.default_rng(4)
    observed = _observed() + 0.05 * rng.standard_normal((4, 41, 2)).astype("float32")

    def model(checkpoint):
        keras.utils.set_random_seed(0)
        correction = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, "tanh"),
                                       keras.layers.Dense(2)])
        return kh.MultipleShooting(_layer(w0=1.3, correction=correction, checkpoint=checkpoint),
                                   segment_length=10, sam=None)

    def loss_and_gradients(m):
        with tf.GradientTape() as tape:
            stitched = m(tf.constant(observed), training=True)
            loss = tf.reduce_mean((stitched - observed) ** 2) + m.losses[0]
        grads = tape.gradient(loss, m.trainable_variables)
        return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]

    plain, checkpointed = model(None), model(4)
    assert checkpointed.layer.checkpoint == 4
    loss, grads = loss_and_gradients(plain)
    loss_c, grads_c = loss_and_gradients(checkpointed)
    assert len(grads) == 5 and all(np.abs(g).max() > 0 for g in grads)
    np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
    for g, g_c in zip(grads, grads_c):
        np.testing.assert_allclose(g_c, g, rtol=1e-5, atol=1e-6 * np.abs(g).max())


def test_continuity_weight_schedule():
    observed = _observed()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=2.0)
    model = kh.MultipleShooting(_layer(w0=1.2), segment_length=10, continuity_weight=schedule,
                                sam=None)
    plain = kh.MultipleShooting(_layer(w0=1.2), segment_length=10, continuity_weight=1.0, sam=None)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.optimizer.iterations.assign(20)
    model(observed, training=True)
    plain(observed, training=True)
    np.testing.assert_allclose(float(model.losses[0]), 0.4 * float(plain.losses[0]), rtol=1e-5)


def test_config_round_trip_and_keras_file(tmp_path):
    observed = _observed()
    correction = keras.Sequential([keras.layers.Dense(4, "tanh"), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Build MultipleShooting before"):
        kh.MultipleShooting(_layer(correction=correction), segment_length=20).compile("sgd")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=2.0)
    model = kh.MultipleShooting(_layer(correction=correction, checkpoint=5), segment_length=20,
                                initial_states="trainable", n_trajectories=4,
                                continuity_weight=schedule, sam=kh.SAM(rho=0.2), state_size=2)
    x = {"trajectories": observed, "index": np.arange(4)}
    model.offsets.offsets.assign(np.random.default_rng(0).normal(0, 0.1, (4, 2, 2)))
    config = model.get_config()
    clone = kh.MultipleShooting.from_config(config)
    assert clone.get_config() == config
    model.save(tmp_path / "ms.keras")
    loaded = keras.saving.load_model(tmp_path / "ms.keras")
    assert loaded.sam.rho == 0.2 and "segment_states" in loaded.sam.exclude
    assert loaded.layer.checkpoint == 5
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(loaded(x, training=True), model(x, training=True), atol=1e-6)


def test_multiple_shooting_recovers_frequency_over_a_long_horizon():
    # Physics only, w0 = 1.4 rad/s observed for 8 s (about 2 periods) from
    # a guess of 0.5: segments of 1 s recover it to 1 %.
    observed = _observed(n=4, n_times=81, w0=1.4)
    model = kh.MultipleShooting(_layer(n_times=81, w0=0.5), segment_length=10, sam=None)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", jit_compile=False)
    model.fit(observed, observed, batch_size=4, epochs=120, verbose=0)
    np.testing.assert_allclose(model.physical_constants()["w0"], 1.4, rtol=0.01)


def test_bad_arguments():
    with pytest.raises(ValueError, match="segment_length=7 for 41 time points"):
        kh.MultipleShooting(_layer(), segment_length=7)
    with pytest.raises(ValueError, match="segment_length=0"):
        kh.MultipleShooting(_layer(), segment_length=0)
    with pytest.raises(ValueError, match="initial_states='free'"):
        kh.MultipleShooting(_layer(), segment_length=10, initial_states="free")
    with pytest.raises(ValueError, match="n_trajectories=None"):
        kh.MultipleShooting(_layer(), segment_length=10, initial_states="trainable")
    for bad in (-1, float("inf"), float("nan"), "1"):
        with pytest.raises(ValueError, match=f"continuity_weight={bad!r}"):
            kh.MultipleShooting(_layer(), segment_length=10, continuity_weight=bad)
    with pytest.raises(ValueError, match="method='dopri5'"):
        kh.MultipleShooting(_layer(method="dopri5"), segment_length=10)
    with pytest.raises(ValueError, match="correction_inputs='state_and_time'"):
        kh.MultipleShooting(_layer(correction=keras.layers.Dense(2),
                                   correction_inputs="state_and_time"), segment_length=10)
    with pytest.raises(TypeError, match="layer="):
        kh.MultipleShooting(keras.layers.Dense(2), segment_length=10)
    model = kh.MultipleShooting(_layer(), segment_length=10, initial_states="trainable",
                                n_trajectories=4)
    with pytest.raises(ValueError, match="no 'index'"):
        model(_observed(), training=True)
    with pytest.raises(ValueError, match=r"shape \(4, 21, 2\)"):
        model({"trajectories": _observed(n_times=21), "index": np.arange(4)}, training=True)
    with pytest.raises(ValueError, match="keys"):
        model({"trajectory": _observed()}, training=True)
    with pytest.raises(ValueError, match=r"Received: trajectories with shape \(4, 41\)"):
        model({"trajectories": _observed()[..., 0], "index": np.arange(4)}, training=True)
    # Per-episode values with another batch than the trajectories: named,
    # instead of TensorFlow's "Incompatible shapes" from inside the solver.
    plain = kh.MultipleShooting(_layer(), segment_length=10, sam=None)
    with pytest.raises(ValueError, match=r"4 samples in trajectories but 3 rows in "
                                         r"constants\['w0'\]"):
        plain({"trajectories": _observed(), "constants": {"w0": np.ones(3, "float32")}},
              training=True)
    with pytest.raises(ValueError, match="4 samples in trajectories but 2 rows in index"):
        model({"trajectories": _observed(), "index": np.arange(2)}, training=True)


def test_compiled_settings_survive_saving_and_profiles_refit(tmp_path):
    # `MultipleShooting` overrides `compile`, which Keras's loader and
    # `compile_from_config` skip: the loaded model must come back compiled,
    # and `profile_likelihood`'s refits (a compiled copy) must run.
    observed = _observed(w0=0.9)
    model = kh.MultipleShooting(_layer(w0=0.9), segment_length=20, sam=None)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(observed, observed, epochs=1, verbose=0)
    model.save(tmp_path / "ms.keras")
    loaded = keras.saving.load_model(tmp_path / "ms.keras")
    assert loaded.optimizer is not None and loaded.optimizer.get_config()["learning_rate"] == pytest.approx(0.05)
    assert loaded.evaluate(observed, observed, verbose=0) == pytest.approx(
        model.evaluate(observed, observed, verbose=0), rel=1e-5)
    prof = kh.profile_likelihood(model, "w0", [0.85, 0.9, 0.95], observed, observed, epochs=1)
    # The data are exact at w0 = 0.9: the profile's minimum is there.
    assert prof.values[np.argmin(prof.statistic)] == pytest.approx(0.9)
    assert prof.statistic[0] > prof.threshold and prof.statistic[2] > prof.threshold


def test_unobserved_segment_starts_are_refused_with_data_starts():
    """With initial_states='data' a segment starts from the observed state
    at its start: one whose weight is 0 (unobserved, filled in with 0)
    started the segment from the filler, silently (w0 1.10 and the damping
    0.72 instead of 1.0 and 0.2 on a long masked series)."""
    observed = _observed(n=4, n_times=41)
    weights = np.ones(observed.shape[:2], "float32")
    weights[:, 5] = 0.0    # not a segment start: fine
    model = kh.MultipleShooting(_layer(), segment_length=10, sam=None)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(observed, observed, sample_weight=weights, epochs=1, batch_size=4, verbose=0)
    weights[1, 20] = 0.0   # the start of the third segment of trajectory 1
    filled = observed.copy()
    filled[1, 20] = 0.0
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"0 at 1 segment start\(s\) \(first: trajectory 1, time "
                                         r"index 20\).*Received: sample_weight with zeros at the "
                                         r"segment starts \[20\]"):
        model.fit(filled, filled, sample_weight=weights, epochs=1, batch_size=4, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Per-value weights of the targets' full shape count a component too.
    per_value = np.ones(observed.shape, "float32")
    per_value[2, 30, 1] = 0.0
    with pytest.raises(ValueError, match=r"first: trajectory 2, time index 30"):
        model.fit(observed, observed, sample_weight=per_value, epochs=1, batch_size=4, verbose=0)
    # Fitted starts take no value from the data's filler: allowed.
    trainable = kh.MultipleShooting(_layer(), segment_length=10, sam=None, state_size=2,
                                    initial_states="trainable", n_trajectories=4)
    trainable.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    trainable.fit({"trajectories": filled, "index": np.arange(4)}, filled, sample_weight=weights,
                  epochs=1, batch_size=4, verbose=0)
