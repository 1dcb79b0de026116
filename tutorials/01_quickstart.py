"""
Title: Quickstart: a first hybrid model
Author: keras_hybrid developers
Description: A known physical law with one unknown constant, plus a small
network for what the law misses, fitted with `model.fit`.
"""

"""
## Introduction

A hybrid model combines an equation you trust with a neural network for the
part you cannot write down. Here the equation is Ohm's law,

```
V = R * I
```

with an unknown resistance `R` (in ohm). The measured voltage also carries
a thermal offset that depends on the temperature of the setup in a way we do
not model: a small network of the temperature supplies it. Training
estimates `R` and the network together; afterwards we read `R`, with its
unit, from the model.

Run this script with `python tutorials/01_quickstart.py`. Plots go to
`tutorials/output/` (or `$KERAS_HYBRID_OUTPUT_DIR`); set
`KERAS_HYBRID_FAST=1` for a quick run with fewer epochs.
"""

"""
## Setup
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import keras_hybrid as kh  # noqa: E402

FAST = os.environ.get("KERAS_HYBRID_FAST", "0") not in ("", "0")
OUTPUT_DIR = pathlib.Path(
    os.environ.get("KERAS_HYBRID_OUTPUT_DIR", pathlib.Path(__file__).parent / "output")
)
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
EPOCHS = 40 if FAST else 300
keras.utils.set_random_seed(0)

"""
## Data

We simulate 1024 measurements: a current `I` between 0 and 2 A, a
temperature between 20 and 80 degC, and the voltage

```
V = R_true * I + offset(temperature) + noise,   R_true = 4.7 ohm
```

where the offset (up to 1.5 V) is unknown to the model.
"""

R_TRUE = 4.7
rng = np.random.default_rng(0)
n = 1024
current = rng.uniform(0.0, 2.0, (n, 1)).astype("float32")
temperature = rng.uniform(20.0, 80.0, (n, 1)).astype("float32")
offset = 1.5 * np.sin(np.pi * (temperature - 50.0) / 30.0)
voltage = (R_TRUE * current + offset + 0.05 * rng.standard_normal((n, 1))).astype("float32")

"""
## The physics: a `ScientificLayer`

The equation is a plain function of the layer's inputs and a dict of
constants, written with `keras.ops` (here a product is enough). Each
constant is a `PhysicalConstant` with a name, an initial guess, a unit and
an optional constraint: `"positive"` keeps `R > 0` throughout training.
Registering the function makes the model saveable.
"""


@keras.saving.register_keras_serializable(package="tutorials")
def ohm(current, constants):
    return constants["R"] * current


ohm_law = kh.ScientificLayer(
    ohm,
    constants=[kh.PhysicalConstant("R", 1.0, unit="ohm", constraint="positive")],
    name="ohm",
)

"""
## The hybrid model

The network sees only the temperature (rescaled to about [-1, 1]); the
physics sees the current. Their sum is the predicted voltage. Giving the
network only what the physics does not explain is the first and best
defence against a network that absorbs the physics; tutorial 2 shows what
happens when that is not possible and how sharpness-aware minimization
(SAM) helps.

`kh.HybridModel` is a functional `keras.Model` whose `train_step` is SAM.
`SAM(rho=0.05, perturb="neural")` perturbs only the network's weights;
`sam=None` would give Keras's plain training step.
"""

current_in = keras.Input((1,), name="current")
temperature_in = keras.Input((1,), name="temperature")
scaled = keras.layers.Rescaling(1 / 30, offset=-50 / 30)(temperature_in)
hidden = keras.layers.Dense(32, activation="tanh")(scaled)
correction = keras.layers.Dense(1, name="thermal_offset")(hidden)
predicted = keras.layers.Add()([ohm_law(current_in), correction])

model = kh.HybridModel(
    [current_in, temperature_in],
    predicted,
    sam=kh.SAM(rho=0.05, perturb="neural"),
)
model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
model.summary()

"""
## Training

`fit` works as usual. The `ConstantsHistory` callback records the
constants after every epoch, under `history.history["constant/R"]`.
"""

history = model.fit(
    [current, temperature],
    voltage,
    epochs=EPOCHS,
    batch_size=64,
    verbose=0,
    callbacks=[kh.ConstantsHistory()],
)
print(f"final loss (MSE, V^2): {history.history['loss'][-1]:.4g}")

"""
## Reading the constants

`physical_constants()` returns the physical values, `constant_units()`
their units.
"""

values = model.physical_constants()
units = model.constant_units()
print("Recovered constants:")
for name, value in values.items():
    print(f"  {name} = {value:.4f} {units[name]}  (true {R_TRUE} {units[name]})")

"""
## Plots

Left: the estimate of `R` per epoch. Right: the network's part of the
voltage against the temperature, compared with the true offset.
"""

grid = np.linspace(20.0, 80.0, 200, dtype="float32")[:, None]
learned_offset = model.predict([np.zeros_like(grid), grid], verbose=0)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
ax1.plot(history.history["constant/R"], label="estimate")
ax1.axhline(R_TRUE, color="k", linestyle="--", label="true")
ax1.set_xlabel("epoch")
ax1.set_ylabel("R [ohm]")
ax1.legend()
ax2.plot(grid[:, 0], 1.5 * np.sin(np.pi * (grid[:, 0] - 50.0) / 30.0), "k--", label="true offset")
ax2.plot(grid[:, 0], learned_offset[:, 0], label="network")
ax2.set_xlabel("temperature [degC]")
ax2.set_ylabel("offset [V]")
ax2.legend()
fig.tight_layout()
path = OUTPUT_DIR / "01_quickstart.png"
fig.savefig(path, dpi=100)
print(f"wrote {path}")

"""
## Next

Tutorial 2 (`02_why_sam.py`) lets the network see everything the physics
sees, which is the usual case for dynamical systems, and shows why plain
training then gets the constants wrong while SAM does not.
"""
