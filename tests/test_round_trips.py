"""Exact round trips: `.keras` files, BackupAndRestore and ModelCheckpoint
with SAM models. Training continued after a save/load (or a resumed fit)
must end at the same weights, bit for bit, as training that never stopped."""

import numpy as np
import pytest

import keras
import keras_hybrid as kh
from keras_hybrid.looksam import LookSAMState
from keras_hybrid.systems import pendulum

EPOCHS, BATCH = 4, 8


def _data():
    times, y0, observed = pendulum.simulate(n_trajectories=16, n_steps=8, seed=1)
    return times, y0, observed


def _model(times, sam):
    keras.utils.set_random_seed(0)
    model = pendulum.build_model(times, sam=sam, hidden=8)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    return model


def _weights(model):
    return [v.numpy() for v in model.weights]


def _assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


class _Interrupt(keras.callbacks.Callback):
    """Simulates a crash at the end of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated crash after epoch {epoch}")


SAMS = [kh.SAM(rho=0.3, perturb="neural"), kh.SAM(rho=0.2, rho_physical=0.05, adaptive=True)]


@pytest.mark.parametrize("sam", SAMS, ids=["neural", "grouped_adaptive"])
def test_keras_file_round_trip_continues_training_identically(sam, tmp_path):
    times, y0, observed = _data()
    model = _model(times, sam)
    model.on_non_finite = "raise"
    model.fit(y0, observed, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")

    # Predictions, constants (value, unit, constraint), SAM settings, policy.
    np.testing.assert_array_equal(loaded.predict(y0, verbose=0), model.predict(y0, verbose=0))
    assert loaded.physical_constants() == model.physical_constants()
    assert loaded.constant_units() == {"w0": "rad/s"}
    layer = loaded.get_layer("pendulum")
    assert layer.constant_specs == model.get_layer("pendulum").constant_specs
    assert layer.constant_specs[0].constraint == "positive"
    assert loaded.sam == sam and loaded.on_non_finite == "raise"
    # Optimizer state: step count and every moment.
    assert int(loaded.optimizer.iterations.numpy()) == 2 * len(y0) // BATCH
    _assert_same([v.numpy() for v in loaded.optimizer.variables],
                 [v.numpy() for v in model.optimizer.variables])

    model.fit(y0, observed, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    loaded.fit(y0, observed, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    _assert_same(_weights(loaded), _weights(model))
    _assert_same([v.numpy() for v in loaded.optimizer.variables],
                 [v.numpy() for v in model.optimizer.variables])


def _uninterrupted(times, y0, observed, sam):
    model = _model(times, sam)
    model.fit(y0, observed, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False)
    return _weights(model)


@pytest.mark.parametrize("sam", SAMS[:1], ids=["neural"])
def test_backup_and_restore_resumes_to_the_same_weights(sam, tmp_path):
    times, y0, observed = _data()
    expected = _uninterrupted(times, y0, observed, sam)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    crashed = _model(times, sam)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(y0, observed, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False,
                    callbacks=[backup, _Interrupt(epoch=1)])
    assert int(crashed.optimizer.iterations.numpy()) == 2 * len(y0) // BATCH

    # A new process: the same code builds a fresh model; BackupAndRestore
    # restores weights, optimizer state and the epoch counter.
    resumed = _model(times, sam)
    history = resumed.fit(y0, observed, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False,
                          callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert len(history.history["loss"]) == EPOCHS - 2  # only epochs 2 and 3 were run
    _assert_same(_weights(resumed), expected)


def test_model_checkpoint_resumes_to_the_same_weights(tmp_path):
    sam = SAMS[0]
    times, y0, observed = _data()
    expected = _uninterrupted(times, y0, observed, sam)

    crashed = _model(times, sam)
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(y0, observed, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False,
                    callbacks=[checkpoint, _Interrupt(epoch=1)])
    resumed = keras.saving.load_model(tmp_path / "epoch2.keras")
    assert resumed.sam == sam
    resumed.fit(y0, observed, batch_size=BATCH, epochs=EPOCHS, initial_epoch=2, verbose=0,
                shuffle=False)
    _assert_same(_weights(resumed), expected)


def test_looksam_resume_starts_with_a_full_sam_step(tmp_path):
    # The LookSAM direction is not a model weight: it is not saved. After a
    # restart the first step is a full SAM step (the stored direction is
    # rebuilt), then the every-k schedule continues from the restored
    # optimizer iteration count.
    times, y0, observed = _data()
    every = kh.SAM(rho=0.3, perturb="neural", every=3)
    model = _model(times, every)
    model.fit(y0, observed, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)  # 4 steps
    assert int(model.optimizer.iterations.numpy()) % 3 == 1  # the next step would reuse
    model.save(tmp_path / "looksam.keras")

    resumed = keras.saving.load_model(tmp_path / "looksam.keras")
    full = keras.saving.load_model(tmp_path / "looksam.keras")
    full.sam = kh.SAM(rho=0.3, perturb="neural")  # every=1: always a full step
    one_batch = (y0[:BATCH], observed[:BATCH])
    for m in (resumed, full, model):
        m.fit(*one_batch, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    _assert_same(_weights(resumed), _weights(full))
    # Without the restart the step reuses the stored direction: different.
    assert not np.array_equal(_weights(model)[-1], _weights(full)[-1])
    # From then on the schedule is the uninterrupted one again: step 5
    # (5 % 3 == 2) reuses the direction stored by the full step.
    directions = [d.numpy().copy() for d in resumed._looksam.directions]
    resumed.fit(*one_batch, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    _assert_same([d.numpy() for d in resumed._looksam.directions], directions)
    assert any(np.any(d != 0) for d in directions)


def test_looksam_direction_is_not_reused_after_weights_are_loaded_back(tmp_path):
    # Weights loaded into the same model object (`load_weights`, as
    # `BackupAndRestore` does when a crashed fit is retried): the stored
    # direction belongs to later weights, so the next step is a full SAM
    # step, as in a fresh process. It used to be reused.
    times, y0, observed = _data()
    every = kh.SAM(rho=0.3, perturb="neural", every=4)
    one_batch = (y0[:BATCH], observed[:BATCH])
    live = _model(times, every)
    live.fit(y0, observed, batch_size=BATCH, epochs=3, verbose=0, shuffle=False)  # 6 steps
    live.save_weights(tmp_path / "step6.weights.h5")
    live.fit(y0, observed, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)  # stored at 8
    assert int(live._looksam.stored_at.numpy()) == 8
    live.set_weights(live.get_weights())  # weights from anywhere: the direction is forgotten
    assert int(live._looksam.stored_at.numpy()) == -1
    live._looksam.stored_at.assign(8)
    live.load_weights(tmp_path / "step6.weights.h5")  # iteration 6 again: 6 % 4 != 0
    assert int(live._looksam.stored_at.numpy()) == -1
    full = _model(times, kh.SAM(rho=0.3, perturb="neural"))  # every=1: always a full step
    full.optimizer.build(full.trainable_variables)
    full.load_weights(tmp_path / "step6.weights.h5")
    rewound = _model(times, every)  # rewound by assignment (e.g. a tf.train.Checkpoint)
    rewound.fit(y0, observed, batch_size=BATCH, epochs=5, verbose=0, shuffle=False)
    for target, source in ((rewound.weights, live.weights),
                           (rewound.optimizer.variables, live.optimizer.variables)):
        for variable, value in zip(target, source):
            variable.assign(value)
    assert int(rewound._looksam.stored_at.numpy()) == 8  # later than iteration 6
    for m in (live, full, rewound):
        m.fit(*one_batch, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    _assert_same(_weights(live), _weights(full))
    _assert_same(_weights(rewound), _weights(full))


def test_looksam_direction_serves_only_its_own_block():
    state = LookSAMState([keras.Variable(np.zeros(2, "float32"))])
    reusable = lambda it: bool(state.reusable_at(np.int64(it), 4))  # noqa: E731
    assert not reusable(5)  # nothing stored
    state.stored_at.assign(4)
    assert [reusable(it) for it in (3, 4, 5, 7, 8, 9)] == [False, False, True, True, False, False]
    state.invalidate()
    assert not reusable(5)


def test_sam_model_wrapper_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(1)])
    model = kh.SAMModel(net, sam=kh.SAM(rho=0.1, synchronized=False), on_non_finite="skip")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    model.save(tmp_path / "wrapped.keras")
    loaded = keras.saving.load_model(tmp_path / "wrapped.keras")
    assert loaded.sam == kh.SAM(rho=0.1, synchronized=False) and loaded.on_non_finite == "skip"
    for m in (model, loaded):
        m.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    _assert_same(_weights(loaded), _weights(model))
