"""
Title: Why SAM: when the network absorbs the physics
Author: keras_hybrid developers
Description: The damped pendulum hybrid trained with plain training and with
sharpness-aware minimization; the frequency estimate per epoch and the
network's share of the dynamics.
"""

"""
## Introduction

A pendulum with friction obeys

```
theta'' = -w0^2 sin(theta) - gamma theta'        (w0 = 1 rad/s, gamma = 0.2 /s)
```

Our hybrid model knows only the frictionless part, `-w0^2 sin(theta)`, with
`w0` unknown (initial guess 0.5 rad/s), and adds a small network `f_net` of
the state `(theta, theta')` to the vector field:

```
d/dt (theta, theta') = f_phys(theta, theta'; w0) + f_net(theta, theta')
```

The whole trajectory is integrated with RK4 inside an `ODELayer`, and the
model is trained on observed trajectories. The network is there to learn
the friction term; nothing stops it from learning part of the gravity term
as well. We train the same model, on the same data, from the same
initialization, twice: with plain training (empirical risk minimization,
ERM) and with SAM perturbing only the network's weights
(`SAM(rho=0.3, perturb="neural")`), and watch `w0` and the share of the
dynamics the network carries.

Run with `python tutorials/02_why_sam.py` (3 min 50 s on two busy CPU
cores, `tutorials/README.md`); `KERAS_HYBRID_FAST=1` runs a short version.
"""

"""
## Setup
"""

import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import keras_hybrid as kh  # noqa: E402
from keras_hybrid.systems import pendulum  # noqa: E402

FAST = os.environ.get("KERAS_HYBRID_FAST", "0") not in ("", "0")
OUTPUT_DIR = pathlib.Path(
    os.environ.get("KERAS_HYBRID_OUTPUT_DIR", pathlib.Path(__file__).parent / "output")
)
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
EPOCHS = 40 if FAST else 600
SEED = 0

"""
## Data

`pendulum.simulate` integrates the damped pendulum (float64 RK4) from 200
random initial states (100 in fast mode), 50 time points 0.05 s apart, and
adds Gaussian noise of standard deviation 0.01. The first observed state of
each trajectory is the model's input, the whole trajectory its target.
"""

times, y0, observed = pendulum.simulate(n_trajectories=100 if FAST else 200, seed=SEED)
true_w0 = pendulum.TRUE_CONSTANTS["w0"]
true_gamma = pendulum.TRUE_CONSTANTS["gamma"]
print(f"data: {observed.shape[0]} trajectories x {observed.shape[1]} time points")

"""
## Measuring the network's share of the dynamics

`ODELayer.vector_field_parts(t, y)` returns the two terms of the vector
field separately. Over all observed states we compute

```
share = ||f_net|| / ||f_phys + f_net||
```

(norms over all states). In the true system the friction term
`-gamma theta'` is what the physics misses; its share of the true vector
field is the value a network that learned *only* the friction would have.
A callback records the share after every epoch.
"""

states = keras.ops.convert_to_tensor(observed.reshape(-1, 2))
true_field = pendulum.damped_vector_field(true_w0, true_gamma)(0.0, observed.reshape(-1, 2))
true_friction = np.stack([0 * observed[..., 1], -true_gamma * observed[..., 1]], -1).reshape(-1, 2)
TRUE_SHARE = float(np.linalg.norm(true_friction) / np.linalg.norm(true_field))


def network_share(model):
    layer = model.get_layer("pendulum")
    physics, correction = layer.vector_field_parts(0.0, states)
    physics = keras.ops.convert_to_numpy(physics)
    correction = keras.ops.convert_to_numpy(correction)
    return float(np.linalg.norm(correction) / np.linalg.norm(physics + correction))


class ShareHistory(keras.callbacks.Callback):
    """Puts the network's share of the vector field into the logs."""

    def on_epoch_end(self, epoch, logs=None):
        logs["network_share"] = network_share(self.model)


"""
## Training: plain (ERM) and SAM

`pendulum.build_model` builds the hybrid: an `ODELayer` holding the
frictionless equation, the constant `w0` (constraint `"positive"`), and a
2x64 tanh network as `correction`. The only difference between the two runs
is the `sam` argument. The `ConstantsHistory` callback records `w0` after
every epoch (`history.history["constant/w0"]`; pass `log_dir=` to also
write TensorBoard scalars).
"""


def train(sam):
    keras.utils.set_random_seed(SEED)
    model = pendulum.build_model(times, sam=sam, seed=SEED)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=True)
    start = time.perf_counter()
    history = model.fit(
        y0,
        observed,
        batch_size=50,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[kh.ConstantsHistory(), ShareHistory()],
    )
    return model, history.history, time.perf_counter() - start


runs = {
    "ERM": train(None),
    "SAM": train(kh.SAM(rho=0.3, perturb="neural")),
}

"""
## Results
"""

print(f"true: w0 = {true_w0:.4f} rad/s, network share of the true friction = {TRUE_SHARE:.3f}")
print("Recovered constants:")
for label, (model, history, seconds) in runs.items():
    w0 = model.physical_constants()["w0"]
    unit = model.constant_units()["w0"]
    print(
        f"  {label}: w0 = {w0:.4f} {unit} (error {abs(w0 - true_w0) / true_w0:.1%}), "
        f"network share {history['network_share'][-1]:.3f}, "
        f"final loss {history['loss'][-1]:.2e}, {seconds:.0f} s"
    )

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for label, (model, history, _) in runs.items():
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax1.plot(epochs, history["constant/w0"], label=label)
    ax2.plot(epochs, history["network_share"], label=label)
ax1.axhline(true_w0, color="k", linestyle="--", label="true")
ax1.set_xlabel("epoch")
ax1.set_ylabel("w0 estimate [rad/s]")
ax1.set_title("Frequency estimate")
ax1.legend()
ax2.axhline(TRUE_SHARE, color="k", linestyle="--", label="friction only (ideal)")
ax2.set_xlabel("epoch")
ax2.set_ylabel("||f_net|| / ||f_phys + f_net||")
ax2.set_title("Network's share of the dynamics")
ax2.legend()
fig.tight_layout()
path = OUTPUT_DIR / "02_why_sam.png"
fig.savefig(path, dpi=100)
print(f"wrote {path}")

"""
## What went wrong with plain training

Both runs fit the trajectories about equally well, yet plain training
settles near half the true frequency. The data constrain only the *sum*
`f_phys + f_net`, and near the observed states a 2x64 tanh network can
represent `-w0^2 sin(theta)` for any `w0` as easily as it represents the
friction. Starting from `w0 = 0.5`, gradient descent reduces the error
fastest by letting the network supply the missing stiffness; once it has,
shifting that stiffness back into `w0` no longer lowers the loss, so `w0`
stays where it was. The network's share of the vector field, which should
equal that of the friction term alone, ends up several times larger: the
network has absorbed part of the physics, and the fitted constant is wrong
although the loss looks fine. Longer training barely helps: the plain
estimate creeps from about 0.51 to 0.53 rad/s over the last 500 epochs,
because the loss is nearly flat along the direction that trades `w0` for
network weights.

SAM minimizes the loss in the worst case over a small ball of weights
around the current ones, and so prefers minima where the loss does not rise
when the weights move. A network that imitates part of gravity carries a
large share of the vector field, and its fit is sensitive to perturbing its
weights; a network that only supplies a small friction term is much less
so. Perturbing only the
network's weights (`perturb="neural"`) therefore penalizes solutions in
which the network carries the physics, while leaving `w0` free to take up
that part of the dynamics: `w0` moves to the true value and the network's
share falls toward that of the friction. Perturbing the physical constant as
well works against this (sharpness along `w0` grows with `w0`, so a flatness
penalty on it pulls it down; in our measurements adaptive SAM over all
weights drove `w0` toward zero), which is why the neural-only variant is the
one to use for parameter estimation.
"""
