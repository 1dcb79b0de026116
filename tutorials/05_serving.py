"""
Title: Serving: export a hybrid model as a SavedModel
Author: keras_hybrid developers
Description: Export a trained pendulum hybrid with `export_saved_model`,
inspect it with `saved_model_cli`, load it in plain TensorFlow, predict and
read the physical constants.
"""

"""
## Introduction

A trained hybrid model is both a predictor and a measurement: it forecasts
trajectories, and its physical constants are estimates someone may want to
read without Python code from this package. `kh.export_saved_model` writes
a TensorFlow SavedModel with three signatures:

```
serve           the model's inputs -> {"output_0": predictions}
constants       ()                 -> {name: float32 scalar}
constant_units  ()                 -> {name: string scalar}
```

plus a JSON file, `assets.extra/keras_hybrid.json`, with the constants'
values, units and constraints. The SavedModel holds traced graphs only:
TensorFlow Serving, `saved_model_cli` and `tf.saved_model.load` use it
without Keras or `keras_hybrid`.

Run with `python tutorials/05_serving.py`; `KERAS_HYBRID_FAST=1` trains
only briefly.
"""

"""
## Setup
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import keras_hybrid as kh  # noqa: E402
from keras_hybrid.systems import pendulum  # noqa: E402

FAST = os.environ.get("KERAS_HYBRID_FAST", "0") not in ("", "0")
OUTPUT_DIR = pathlib.Path(
    os.environ.get("KERAS_HYBRID_OUTPUT_DIR", pathlib.Path(__file__).parent / "output")
)
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
EPOCHS = 10 if FAST else 300

"""
## Train a hybrid model

The damped pendulum hybrid of tutorial 2 (frictionless physics with unknown
`w0` plus a small network), trained with SAM on the network's weights.
Training is half as long as in tutorial 2 (300 epochs give `w0` = 0.978
rad/s, against 1.01 after 600); the point here is the export.
"""

times, y0, observed = pendulum.simulate(n_trajectories=100 if FAST else 200, seed=0)
keras.utils.set_random_seed(0)
model = pendulum.build_model(times, sam=kh.SAM(rho=0.3, perturb="neural"))
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=True)
model.fit(y0, observed, batch_size=50, epochs=EPOCHS, verbose=0)
keras_constants = model.physical_constants()
print(f"in Keras: w0 = {keras_constants['w0']:.4f} {model.constant_units()['w0']}")

"""
## Export

`export_saved_model(model, path)` refuses to replace an existing directory
unless `overwrite=True`, and writes atomically: `path` never holds a
half-written model.
"""

export_dir = OUTPUT_DIR / "pendulum_savedmodel"
kh.export_saved_model(model, export_dir, overwrite=True)
print(f"exported to {export_dir}")
with open(export_dir / "assets.extra" / "keras_hybrid.json") as f:
    print("metadata constants:", json.dumps(json.load(f)["constants"]))

"""
## Inspect it with `saved_model_cli`

`saved_model_cli` ships with TensorFlow. `show --all` lists every
signature with its inputs and outputs (dtypes and shapes).
"""

# The console script sits next to this Python (in a virtual environment that
# is not activated it may not be on PATH); `python -m` is the fallback.
cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
cli = str(cli) if cli.exists() else shutil.which("saved_model_cli")
command = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
shown = subprocess.run(
    command + ["show", "--dir", str(export_dir), "--all"],
    capture_output=True,
    text=True,
    check=True,
)
listing = shown.stdout[shown.stdout.find("signature_def['constant_units']"):]
print(listing.split("The MetaGraph with tag set")[0].split("Concrete Functions:")[0].rstrip())

"""
## Load it in plain TensorFlow

`tf.saved_model.load` returns an object whose `signatures` are the traced
functions; signature functions take keyword arguments named after the
inputs (`y0` here) and return dicts. To show that this package is not
needed, we load it in a fresh Python process that never imports
`keras_hybrid` (nor any code of ours: the equations were traced into the
graph at export time).
"""

serving_code = textwrap.dedent(
    f"""
    import sys
    import tensorflow as tf
    served = tf.saved_model.load({str(export_dir)!r})
    assert "keras_hybrid" not in sys.modules
    constants = served.signatures["constants"]()
    units = served.signatures["constant_units"]()
    for name in sorted(constants):
        unit = units[name].numpy().decode()
        print(f"served (plain TensorFlow): {{name}} = {{float(constants[name]):.4f}} {{unit}}")
    trajectory = served.signatures["serve"](y0=tf.constant([[1.0, 0.0]]))["output_0"]
    print("served trajectory shape:", tuple(trajectory.shape))
    """
)
served_run = subprocess.run(
    [sys.executable, "-c", serving_code],
    capture_output=True,
    text=True,
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
)
if served_run.returncode != 0:
    sys.exit(f"Loading in plain TensorFlow failed:\n{served_run.stderr}")
print(served_run.stdout.rstrip())

"""
In this process, the served predictions agree with Keras's to float32
round-off:
"""

served = tf.saved_model.load(str(export_dir))
test_y0 = y0[:8]
served_pred = served.signatures["serve"](y0=tf.constant(test_y0))["output_0"].numpy()
keras_pred = keras.ops.convert_to_numpy(model(test_y0, training=False))
print(f"max |served - keras| over 8 trajectories: {np.max(np.abs(served_pred - keras_pred)):.2e}")
served_w0 = float(served.signatures["constants"]()["w0"])
print(f"constants signature: w0 = {served_w0:.4f} (Keras: {keras_constants['w0']:.4f})")

"""
## Plot

One served trajectory against the observations.
"""

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(times, observed[0, :, 0], "k.", label="observed theta")
ax.plot(times, served_pred[0, :, 0], label="served prediction, theta")
ax.plot(times, observed[0, :, 1], "k+", label="observed theta'")
ax.plot(times, served_pred[0, :, 1], label="served prediction, theta'")
ax.set_xlabel("time [s]")
ax.set_title(f"SavedModel prediction (w0 = {served_w0:.3f} rad/s)")
ax.legend(fontsize=8)
fig.tight_layout()
path = OUTPUT_DIR / "05_serving.png"
fig.savefig(path, dpi=100)
print(f"wrote {path}")
