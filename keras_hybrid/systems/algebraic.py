"""Small-data algebraic laws: simulators and their physics parts.

Each task observes a scalar response `y` at a few values of one
independent variable `x`, given on its raw physical scale (so a network
that reads `x` sees inputs of very different magnitudes across tasks). The
simulated truth is the known law plus a term the physics part leaves out:

```
michaelis_menten      v = Vmax S / (Km + S) + k_ns S
                      S in [0.02, 1.1] mM (12 points, log-spaced)
                      Vmax = 1.0 mM/min, Km = 0.3 mM, k_ns = 0.2 /min
                      (non-saturable uptake, left out), noise 0.01

arrhenius             ln k = ln(A exp(-Ea / (R T)) + k_b)
                      T in [270, 630] K (20 points, equally spaced)
                      ln A = 20 (k in 1/s), Ea = 50 kJ/mol,
                      k_b = 0.05 /s (a temperature-independent background
                      rate, left out: it curves the Arrhenius plot below
                      about 330 K), noise 0.02 on ln k

first_order_kinetics  C = C0 exp(-k t) + C_inf
                      t in [0, 250] min (15 points, equally spaced)
                      C0 = 1.0 mM, k = 0.02 /min, C_inf = 0.1 mM
                      (unmodelled offset, left out), noise 0.01
```

The physics parts (`*_law`) are the laws without the left-out term; the
constants they estimate are in `TASKS[name]["true"]`.
"""

import keras
import numpy as np

from keras_hybrid.systems._checks import check_count, check_number, check_seed

GAS_CONSTANT = 8.314462618e-3  # kJ / (mol K)


@keras.saving.register_keras_serializable(package="keras_hybrid_systems")
def michaelis_menten_law(s, c):
    """`Vmax S / (Km + S)`; `S` in mM, `(batch, 1)`."""
    return c["Vmax"] * s / (c["Km"] + s)


@keras.saving.register_keras_serializable(package="keras_hybrid_systems")
def arrhenius_law(temperature, c):
    """`ln k = ln A - Ea / (R T)`; `T` in K, `Ea` in kJ/mol."""
    return c["lnA"] - c["Ea"] / (GAS_CONSTANT * temperature)


@keras.saving.register_keras_serializable(package="keras_hybrid_systems")
def first_order_law(t, c):
    """`C0 exp(-k t)`; `t` in minutes, `C0` in mM, `k` in 1/min."""
    return c["C0"] * keras.ops.exp(-c["k"] * t)


def michaelis_menten_truth(s, Vmax=1.0, Km=0.3, k_ns=0.2):
    """True rate (NumPy), including the non-saturable term `k_ns S`."""
    return Vmax * s / (Km + s) + k_ns * s


def arrhenius_truth(temperature, lnA=20.0, Ea=50.0, k_b=0.05):
    """True `ln k` (NumPy), including the background rate `k_b`."""
    return np.log(np.exp(lnA - Ea / (GAS_CONSTANT * temperature)) + k_b)


def first_order_truth(t, C0=1.0, k=0.02, C_inf=0.1):
    """True concentration (NumPy), including the offset `C_inf`."""
    return C0 * np.exp(-k * t) + C_inf


# name -> law, truth, design (range, n points, spacing), noise, true values
# of the estimated constants, and `(initial value, unit)` of each.
TASKS = {
    "michaelis_menten": dict(
        law=michaelis_menten_law, truth=michaelis_menten_truth, range=(0.02, 1.1), n=12, spacing="log",
        noise=0.01, true={"Vmax": 1.0, "Km": 0.3}, initial={"Vmax": (0.5, "mM/min"), "Km": (0.1, "mM")},
        x_unit="mM",
    ),
    "arrhenius": dict(
        law=arrhenius_law, truth=arrhenius_truth, range=(270.0, 630.0), n=20, spacing="linear",
        noise=0.02, true={"lnA": 20.0, "Ea": 50.0}, initial={"lnA": (15.0, "ln(1/s)"), "Ea": (40.0, "kJ/mol")},
        x_unit="K",
    ),
    "first_order_kinetics": dict(
        law=first_order_law, truth=first_order_truth, range=(0.0, 250.0), n=15, spacing="linear",
        noise=0.01, true={"C0": 1.0, "k": 0.02}, initial={"C0": (0.5, "mM"), "k": (0.05, "1/min")},
        x_unit="min",
    ),
}


def _spec(name):
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"`name` must be one of {sorted(TASKS)}. Received: name={name!r}")
    return TASKS[name]


def design(name, n=None):
    """The task's observed `x` values `(n, 1)`, float32 (fixed design)."""
    spec = _spec(name)
    lo, hi = spec["range"]
    n = spec["n"] if n is None else check_count("n", n, minimum=2)
    grid = np.geomspace(lo, hi, n) if spec["spacing"] == "log" else np.linspace(lo, hi, n)
    return grid[:, None].astype("float32")


def simulate(name, n=None, seed=0, x=None, noise=None):
    """Noisy observations of one task.

    Args:
        name: a key of `TASKS`.
        n: number of points on the task's design grid. Defaults to the
            task's `n`.
        seed: noise seed. Defaults to `0`.
        x: explicit `x` values `(m, 1)` instead of the design grid.
            Defaults to `None`.
        noise: noise standard deviation; defaults to the task's.

    Returns:
        `(x, y)`, both `(m, 1)` float32.
    """
    spec = _spec(name)
    x = design(name, n) if x is None else np.asarray(x, "float32").reshape(-1, 1)
    noise = spec["noise"] if noise is None else check_number("noise", noise, minimum=0)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    y = spec["truth"](x.astype("float64")) + noise * rng.standard_normal(x.shape)
    return x, y.astype("float32")


def uniform_inputs(name, n, seed):
    """`n` values of `x` drawn uniformly (log-uniformly for a log design)
    over the task's range, `(n, 1)` float32."""
    spec = _spec(name)
    lo, hi = spec["range"]
    check_count("n", n)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    if spec["spacing"] == "log":
        x = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    else:
        x = rng.uniform(lo, hi, n)
    return np.sort(x)[:, None].astype("float32")
