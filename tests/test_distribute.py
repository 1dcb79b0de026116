"""SAM under tf.distribute.MirroredStrategy on 2 logical CPU devices.

Logical devices must be configured before TensorFlow initializes its
devices, so the scenarios run once in a fresh subprocess that writes their
measurements to a JSON file; the tests below check those numbers.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r'''
import json, os, sys, warnings
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
import keras  # noqa: E402
import keras_hybrid as kh  # noqa: E402

results = {}
LR, RHO = 0.1, 0.3
W0, B0 = np.array([[0.5], [-0.3], [0.2]], "float32"), np.array([0.1], "float32")


# One strategy for the whole process: separate MirroredStrategy objects
# in one process can hand out clashing collective instance keys.
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def mirrored():
    return STRATEGY


def scope(strategy):
    return strategy.scope() if strategy else tf.name_scope("single_device")


def weights(model):
    return [v.numpy() for v in model.weights]


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, "float64") - np.asarray(v, "float64")))) for u, v in zip(a, b))


def replicas_identical(model):
    per_variable = [[np.asarray(r) for r in v.value.values] for v in model.weights]
    return all(len(r) == 2 and np.array_equal(r[0], r[1]) for r in per_variable)


# -- 1. A hybrid model: synchronized SAM on 2 replicas vs one device -------
@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def scaled(x, c):
    return c["k"] * x[..., :1]


def hybrid(sam, strategy=None):
    keras.utils.set_random_seed(0)
    with scope(strategy):
        inputs = keras.Input((3,))
        hidden = keras.layers.Dense(16, "tanh")(inputs)
        physics = kh.ScientificLayer(scaled, [kh.PhysicalConstant("k", 0.5, "1", "positive")])
        model = kh.HybridModel(inputs, physics(inputs) + keras.layers.Dense(1)(hidden), sam=sam)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


rng = np.random.default_rng(0)
xh = rng.normal(size=(64, 3)).astype("float32")
yh = (np.sin(2 * xh[:, :1]) + 0.5 * xh[:, 1:2]).astype("float32")
for name, sam in {
    "all": kh.SAM(rho=RHO, perturb="all"),
    "grouped_adaptive": kh.SAM(rho=RHO, perturb="all", rho_physical=0.05, adaptive=True),
    "neural": kh.SAM(rho=RHO, perturb="neural"),
    "per_replica": kh.SAM(rho=RHO, perturb="all", synchronized=False),
}.items():
    single, dist = hybrid(sam), hybrid(sam, mirrored())
    h1 = single.fit(xh, yh, batch_size=8, epochs=5, verbose=0, shuffle=False)  # 40 steps
    h2 = dist.fit(xh, yh, batch_size=8, epochs=5, verbose=0, shuffle=False)
    results["hybrid_" + name] = {
        "steps": int(dist.optimizer.iterations.numpy()),
        "max_weight_diff": max_diff(weights(single), weights(dist)),
        "max_loss_diff": max_diff([h1.history["loss"]], [h2.history["loss"]]),
        "k_single": single.physical_constants()["k"],
        "k_dist": dist.physical_constants()["k"],
        "replicas_identical": replicas_identical(dist),
    }


# -- 2. A linear model against hand-computed SAM steps ------------------
def linear(sam, strategy=None, jit=False, on_non_finite="skip"):
    with scope(strategy):
        inputs = keras.Input((3,))
        dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(W0),
                                   bias_initializer=keras.initializers.Constant(B0))
        model = kh.HybridModel(inputs, dense(inputs), sam=sam, on_non_finite=on_non_finite)
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=jit)
    return model


def grads(w, b, x, y):
    r = x @ w + b - y
    return 2 * x.T @ r / len(x), np.array([2 * r.sum() / len(x)])


def hand_sam(x, y, batch, groups, rho=RHO):
    """SGD steps on batches of `batch`; each batch split into `groups`
    equal parts that are perturbed with their own gradient."""
    x, y = x.astype("float64"), y.astype("float64")
    w, b = W0.astype("float64"), B0.astype("float64")
    for s in range(len(x) // batch):
        xb, yb = x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
        n = batch // groups
        gw_mean, gb_mean = 0.0, 0.0
        for r in range(groups):
            xr, yr = xb[r * n:(r + 1) * n], yb[r * n:(r + 1) * n]
            gw, gb = grads(w, b, xr, yr)
            norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2)) if rho else 1.0
            gw2, gb2 = grads(w + rho * gw / norm, b + rho * gb / norm, xr, yr)
            gw_mean, gb_mean = gw_mean + gw2 / groups, gb_mean + gb2 / groups
        w, b = w - LR * gw_mean, b - LR * gb_mean
    return [w, b]


x = rng.normal(size=(32, 3)).astype("float32")
y = rng.normal(size=(32, 1)).astype("float32")
for synchronized in (True, False):
    model = linear(kh.SAM(rho=RHO, perturb="all", synchronized=synchronized), mirrored())
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    results[f"hand_synchronized_{synchronized}"] = {
        "err_vs_whole_batch_sam": max_diff(weights(model), hand_sam(x, y, 8, 1)),
        "err_vs_per_replica_sam": max_diff(weights(model), hand_sam(x, y, 8, 2)),
        "replicas_identical": replicas_identical(model),
    }

# -- 3. Non-finite data under the strategy ------------------------------
y_bad = y[:16].copy()
y_bad[5, 0] = np.nan  # in replica 1's half of the first batch
for label, sam, groups, rho in (
    ("sync", kh.SAM(rho=RHO, perturb="all"), 1, RHO),
    ("per_replica", kh.SAM(rho=RHO, perturb="all", synchronized=False), 2, RHO),
    ("plain", None, 1, 0.0),
):
    model = linear(sam, mirrored())
    history = model.fit(x[:16], y_bad, batch_size=8, epochs=1, verbose=0, shuffle=False)
    results["nonfinite_" + label] = {
        "all_finite": all(bool(np.all(np.isfinite(w))) for w in weights(model)),
        "iterations": int(model.optimizer.iterations.numpy()),
        # The first step is skipped, the second is the one hand-computed step.
        "err_vs_second_batch_only": max_diff(weights(model), hand_sam(x[8:16], y[8:16], 8, groups, rho)),
        "loss_is_nan": bool(np.isnan(history.history["loss"][0])),
        "replicas_identical": replicas_identical(model),
    }
model = linear(kh.SAM(rho=RHO, perturb="all"), mirrored(), on_non_finite="raise")
try:
    model.fit(tf.data.Dataset.from_tensor_slices((x[:16], y_bad)).batch(8), epochs=1, verbose=0)
    results["nonfinite_raise"] = None
except FloatingPointError as error:
    results["nonfinite_raise"] = {
        "message": str(error),
        "unchanged": max_diff(weights(model), [W0, B0]) == 0.0,
    }

# -- 4. jit_compile=True under the strategy -----------------------------
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jit = linear(kh.SAM(rho=RHO, perturb="all"), mirrored(), jit=True)
    jit.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
graph = linear(kh.SAM(rho=RHO, perturb="all"), mirrored())
graph.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
results["jit"] = {
    "warnings": [str(w.message) for w in caught if "19005" in str(w.message)],
    "jit_compile_after_fit": bool(jit.jit_compile),
    "diff_to_graph_mode": max_diff(weights(jit), weights(graph)),
}

# -- 5. LookSAM is refused under a multi-replica strategy ----------------
try:
    linear(kh.SAM(rho=RHO, perturb="all", every=2), mirrored()).fit(x, y, batch_size=8, epochs=1, verbose=0)
    results["looksam"] = None
except ValueError as error:
    results["looksam"] = str(error)

# -- 6. A perturbed pass that fails on one replica only --------------------
@keras.saving.register_keras_serializable(package="distribute_test")
def root_of_k_minus_x(x, c):
    return keras.ops.sqrt(c["k"] - x)


def root_model(sam, strategy=None):
    with scope(strategy):
        inputs = keras.Input((1,))
        law = kh.ScientificLayer(root_of_k_minus_x, [kh.PhysicalConstant("k", 1.0)])
        model = kh.HybridModel(inputs, law(inputs), sam=sam, on_non_finite="warn")
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


# Replica 0 gets x = 0 (sqrt(0.7 - 0) at k - rho), replica 1 x = 0.8 (NaN).
x_root = np.array([0.0] * 4 + [0.8] * 4, "float32")[:, None]
y_root = np.full((8, 1), 3.0, "float32")
plain_root = root_model(None)
plain_root.fit(x_root, y_root, batch_size=8, epochs=1, verbose=0, shuffle=False)
for synchronized in (True, False):
    sam = kh.SAM(rho=0.3, perturb="physical", synchronized=synchronized)
    model = root_model(sam, mirrored())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x_root, y_root, batch_size=8, epochs=1, verbose=0, shuffle=False)
    results[f"one_replica_fallback_{synchronized}"] = {
        "k": float(model.physical_constants()["k"]),
        "plain_k": float(plain_root.physical_constants()["k"]),
        "fallbacks": history.history["sam_fallbacks"],
        "warned": any("perturbed weights was not finite" in str(w.message) for w in caught),
    }

with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=1)
'''


# Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy with one CPU
# device per worker before the first step (in `_maybe_symbolic_build`, for
# plain `keras.Model`s too), so the workers drive `train_step` with
# `strategy.run`, as a custom training loop does.
WORKER = r'''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()
import keras  # noqa: E402
import keras_hybrid as kh  # noqa: E402

W0, B0 = np.array([[0.5], [-0.3], [0.2]], "float32"), np.array([0.1], "float32")
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 3)).astype("float32")
y = rng.normal(size=(32, 1)).astype("float32")
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
results = {}
for synchronized in (True, False):
    with strategy.scope():
        inputs = keras.Input((3,))
        dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(W0),
                                   bias_initializer=keras.initializers.Constant(B0))
        model = kh.HybridModel(inputs, dense(inputs), sam=kh.SAM(rho=0.3, perturb="all", synchronized=synchronized))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.optimizer.build(model.trainable_variables)
    # Global batch 8: worker 0 trains on rows 0-3 of it, worker 1 on rows 4-7.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).with_options(options)

    @tf.function
    def step(batch):
        return strategy.run(model.train_step, args=(batch,))

    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    results[f"kernel_{synchronized}"] = model.weights[0].numpy()
    results[f"bias_{synchronized}"] = model.weights[1].numpy()
np.savez(sys.argv[1], replicas=strategy.num_replicas_in_sync, **results)
'''


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _hand_sam(x, y, batch, groups, rho=0.3, lr=0.1):
    w, b = np.array([[0.5], [-0.3], [0.2]]), np.array([0.1])

    def grads(w, b, x, y):
        r = x @ w + b - y
        return 2 * x.T @ r / len(x), np.array([2 * r.sum() / len(x)])

    for s in range(len(x) // batch):
        xb, yb = x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
        n = batch // groups
        step_w, step_b = 0.0, 0.0
        for r in range(groups):
            xr, yr = xb[r * n:(r + 1) * n], yb[r * n:(r + 1) * n]
            gw, gb = grads(w, b, xr, yr)
            norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
            gw2, gb2 = grads(w + rho * gw / norm, b + rho * gb / norm, xr, yr)
            step_w, step_b = step_w + gw2 / groups, step_b + gb2 / groups
        w, b = w - lr * step_w, b - lr * step_b
    return w, b


def test_train_step_under_multi_worker_mirrored_strategy(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ports = _free_ports(2)
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                  "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(config))
        workers.append(subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"worker{index}.npz")],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    for worker in workers:
        try:
            _, err = worker.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise
        assert worker.returncode == 0, err[-4000:]
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert int(first["replicas"]) == 2
    for key in first.files:  # the two workers hold identical weights
        np.testing.assert_array_equal(first[key], second[key])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 3)), rng.normal(size=(32, 1))
    for synchronized, groups in ((True, 1), (False, 2)):
        w, b = _hand_sam(x.astype("float32").astype("float64"), y.astype("float32").astype("float64"), 8, groups)
        np.testing.assert_allclose(first[f"kernel_{synchronized}"], w, atol=1e-6)
        np.testing.assert_allclose(first[f"bias_{synchronized}"], b, atol=1e-6)
    assert np.max(np.abs(first["kernel_True"] - first["kernel_False"])) > 1e-3


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distribute")
    script = directory / "scenarios.py"
    script.write_text(SCRIPT)
    out = directory / "results.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(script), str(out)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["all", "grouped_adaptive", "neural"])
def test_synchronized_sam_on_two_replicas_equals_one_device(measured, name):
    r = measured["hybrid_" + name]
    assert r["steps"] == 40
    # Same steps up to float rounding of the all-reduce (sum order).
    assert r["max_weight_diff"] < 1e-5, r
    assert r["max_loss_diff"] < 1e-5, r  # the reported loss is the global one
    assert abs(r["k_single"] - 0.5) > 1e-3  # the constant was trained
    assert r["k_dist"] == pytest.approx(r["k_single"], abs=1e-5)


@pytest.mark.parametrize("name", ["all", "grouped_adaptive", "neural", "per_replica"])
def test_replicas_stay_bit_identical_after_many_steps(measured, name):
    assert measured["hybrid_" + name]["replicas_identical"]


def test_per_replica_sam_differs_from_one_device(measured):
    # m-sharpness is a different algorithm: it must not match whole-batch SAM.
    assert measured["hybrid_per_replica"]["max_weight_diff"] > 1e-3


@pytest.mark.parametrize("synchronized", [True, False])
def test_steps_equal_hand_computed_sam(measured, synchronized):
    r = measured[f"hand_synchronized_{synchronized}"]
    matching = "err_vs_whole_batch_sam" if synchronized else "err_vs_per_replica_sam"
    other = "err_vs_per_replica_sam" if synchronized else "err_vs_whole_batch_sam"
    assert r[matching] < 1e-6, r
    assert r[other] > 1e-3, r  # the two modes are distinguishable here
    assert r["replicas_identical"]


@pytest.mark.parametrize("label", ["sync", "per_replica", "plain"])
def test_non_finite_step_is_skipped_on_every_replica(measured, label):
    r = measured["nonfinite_" + label]
    assert r["all_finite"] and r["replicas_identical"]
    assert r["iterations"] == 1  # one of the two steps was applied
    assert r["err_vs_second_batch_only"] < 1e-6, r
    assert r["loss_is_nan"]  # reported, not hidden


def test_non_finite_loss_raises_under_the_strategy(measured):
    r = measured["nonfinite_raise"]
    assert r is not None, "no FloatingPointError was raised"
    assert "Non-finite training loss (nan) at epoch 0, batch 0" in r["message"]
    assert r["unchanged"]


def test_jit_compile_falls_back_with_a_clear_warning(measured):
    r = measured["jit"]
    assert len(r["warnings"]) == 1 and "MirroredStrategy, 2 replica(s)" in r["warnings"][0]
    assert r["jit_compile_after_fit"] is True  # the user's setting is kept
    assert r["diff_to_graph_mode"] == 0.0


def test_looksam_is_refused_with_a_clear_message(measured):
    message = measured["looksam"]
    assert message is not None
    assert "`SAM(every=2)` (LookSAM) is not supported" in message
    assert "Received: sam=SAM(rho=0.3" in message


@pytest.mark.parametrize("synchronized", [True, False])
def test_a_fallback_on_one_replica_falls_back_on_all(measured, synchronized):
    # The whole step is the plain one (counted and warned about), not
    # replica 0's SAM gradient averaged with replica 1's plain one (k would
    # be 1.0414695 instead of 1.0385411).
    r = measured[f"one_replica_fallback_{synchronized}"]
    assert r["k"] == pytest.approx(r["plain_k"], abs=1e-6)
    assert abs(r["plain_k"] - 1.0414695) > 1e-3
    assert r["fallbacks"] == [1]
    assert r["warned"]
