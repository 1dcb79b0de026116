"""Steps for Adam to fit constants of any magnitude: three parameterizations.

Michaelis-Menten rates `v = Vm s / (K + s)` at 24 substrate levels
(geometric, 0.005 to 1), true Vm = 200, K = 0.05, noise sd 4, seed 0;
started at Vm = 100, K = 0.5; physics only, `Adam(1e-2)`, full batch, MSE.
The same problem with every magnitude (levels, rates, noise, constants)
multiplied by 1e-3 and 1e3, and, at magnitude 1, started 10x too low
(20, 0.005) and 10x too high (2000, 5). For each positive-constant map

* `softplus(raw)`: keras_hybrid 0.1 (`parameterization="legacy"`);
* `scale * softplus(raw)`, `scale` = initial value;
* `scale * exp(raw)`: keras_hybrid's choice (`PhysicalConstant` default);

it prints the first step from which both constants stay within 1 % of the
least-squares constants (numpy, float64), or `never` within `--steps`.

Run: `python benchmarks/constant_scales.py` (about a minute on 2 cores).
"""

import argparse

import _common  # noqa: F401  (quiet TensorFlow logs)
import keras
import numpy as np
import tensorflow as tf

import keras_hybrid as kh


def least_squares(s, v):
    """(Vm, K) minimizing the squared error: log grid on K with Vm profiled
    out, then Gauss-Newton."""
    def profile(k):
        f = s / (k + s)
        vm = f @ v / (f @ f)
        return vm, np.sum((vm * f - v) ** 2)

    grid = np.geomspace(s.min() * 1e-3, s.max() * 1e3, 20001)
    k = grid[np.argmin([profile(g)[1] for g in grid])]
    vm = profile(k)[0]
    for _ in range(50):
        f = s / (k + s)
        jac = np.stack([f, -vm * s / (k + s) ** 2], 1)
        step = np.linalg.lstsq(jac, v - vm * f, rcond=None)[0]
        vm, k = vm + step[0], k + step[1]
    return np.array([vm, k])


def data(magnitude):
    rng = np.random.default_rng(0)
    s = np.geomspace(0.005, 1.0, 24) * magnitude
    v = 200 * magnitude * s / (0.05 * magnitude + s) + 4.0 * magnitude * rng.standard_normal(24)
    return s, v


def scaled_softplus(init):
    scale = tf.constant(init, tf.float32)
    raw0 = np.log(np.expm1(1.0))
    return (lambda raw: scale * tf.math.softplus(raw)), np.full(2, raw0, "float32")


def package_map(parameterization):
    def make(init):
        specs = [kh.PhysicalConstant(n, float(x), constraint="positive", parameterization=parameterization)
                 for n, x in zip(("Vm", "K"), init)]
        raw0 = np.array([c.raw_initial_value() for c in specs], "float32")
        return (lambda raw: tf.stack([c.to_physical(raw[i]) for i, c in enumerate(specs)])), raw0
    return make


MAPS = {
    "softplus(raw) (0.1)": package_map("legacy"),
    "scale*softplus(raw)": scaled_softplus,
    "scale*exp(raw)": package_map("scaled"),
}


def steps_to_one_percent(make_map, s, v, init, steps):
    expected = least_squares(s, v)
    forward, raw0 = make_map(np.asarray(init, float))
    raw = tf.Variable(raw0)
    optimizer = keras.optimizers.Adam(1e-2)
    s32, v32 = tf.constant(s, tf.float32), tf.constant(v, tf.float32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            vm, k = tf.unstack(forward(raw))
            loss = tf.reduce_mean((vm * s32 / (k + s32) - v32) ** 2)
        optimizer.apply_gradients([(tape.gradient(loss, raw), raw)])
        return forward(raw)

    last_outside = 0
    for i in range(1, steps + 1):
        value = step().numpy()
        if not np.max(np.abs(value / expected - 1)) < 0.01:
            last_outside = i
    return "never" if last_outside == steps else str(last_outside + 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)
    cases = [(f"x{m:g}, start (100, 0.5)", m, (100 * m, 0.5 * m)) for m in (1e-3, 1.0, 1e3)]
    cases += [("x1, start (20, 0.005)", 1.0, (20.0, 0.005)), ("x1, start (2000, 5)", 1.0, (2000.0, 5.0))]
    print(f"steps until both constants stay within 1 % of least squares (max {args.steps})")
    print(f"{'case':<28}" + "".join(f"{name:>22}" for name in MAPS))
    for label, magnitude, init in cases:
        s, v = data(magnitude)
        row = [steps_to_one_percent(make, s, v, init, args.steps) for make in MAPS.values()]
        print(f"{label:<28}" + "".join(f"{r:>22}" for r in row), flush=True)


if __name__ == "__main__":
    main()
