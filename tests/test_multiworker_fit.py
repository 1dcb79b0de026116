"""`fit` under `MultiWorkerMirroredStrategy` with a single worker.

(Two worker processes are tested in `test_distribute.py` with a custom
loop: there Keras's own `fit` fails before the first step.)
"""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r'''
import json, os, sys
os.environ.pop("TF_CONFIG", None)  # one worker, this process
import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TF op
import keras
import keras_hybrid as kh

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 3)).astype("float32")
y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype("float32")


def fit(scope):
    with scope:
        inputs = keras.Input((3,))
        dense = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")
        model = kh.HybridModel(inputs, dense(inputs), sam=kh.SAM(rho=0.3, perturb="all"))
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    return [w.numpy().ravel().tolist() for w in model.weights], history.history["loss"]


weights, loss = fit(strategy.scope())
reference, reference_loss = fit(tf.distribute.get_strategy().scope())
json.dump({"replicas": strategy.num_replicas_in_sync, "weights": weights, "loss": loss,
           "reference": reference, "reference_loss": reference_loss}, open(sys.argv[1], "w"))
'''


def test_fit_under_single_worker_multiworker_strategy_equals_plain_fit(tmp_path):
    script, out = tmp_path / "mwms.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["replicas"] == 1
    for got, expected in zip(data["weights"], data["reference"]):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(data["loss"], data["reference_loss"], rtol=1e-6)
    assert data["loss"][-1] < 0.5 * data["loss"][0]  # it trained
