"""Coverage of the 95 % intervals of `kh.constant_uncertainty`, and the
verdict cases and cost on the pendulum hybrid.

Simulated data with known constants; each replicate draws new noise (and
a new network initialization), fits, and checks whether the interval
covers the truth.

    python benchmarks/coverage.py --quick            # algebraic cases, 30 replicates
    python benchmarks/coverage.py --cases law,decay --numpy-fit   # physics only, NumPy fits
    python benchmarks/coverage.py --cases pendulum   # pendulum hybrid verdicts and cost

Cases:
  law        Michaelis-Menten y = Vm x / (K + x), physics only (Vm=2, K=0.5)
  decay      exponential decay y = A exp(-k t), physics only (A=2, k=0.8)
  hybrid     decay + a network for an unmodelled 0.3 sin(2 t), ERM and SAM; intervals
             with the standard-normal and the evidence prior from the same fit
  covariate  decay in t + a network of a second input z for an unmodelled 0.5 tanh(2 z)
             (z uniform in [-1, 1], independent of t): a hybrid whose constants the data
             do pin down; ERM and SAM, both priors
  pendulum   damped-pendulum ODE hybrid (2x64 MLP), ERM and SAM: intervals,
             verdicts and the cost against the training time
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_hybrid as kh  # noqa: E402


@keras.saving.register_keras_serializable(package="coverage")
def mm_law(x, k):
    return k["Vm"] * x / (k["K"] + x)


@keras.saving.register_keras_serializable(package="coverage")
def decay_law(t, k):
    return k["A"] * keras.ops.exp(-k["k"] * t)


@keras.saving.register_keras_serializable(package="coverage")
def decay_of_first_column(x, k):
    return k["A"] * keras.ops.exp(-k["k"] * x[..., :1])


TRUTH = {"law": {"Vm": 2.0, "K": 0.5}, "decay": {"A": 2.0, "k": 0.8}, "hybrid": {"A": 2.0, "k": 0.8},
         "covariate": {"A": 2.0, "k": 0.8}}
HYBRIDS = ("hybrid", "covariate")


def _data(case, seed, n=40, noise=0.05):
    rng = np.random.default_rng(seed)
    if case == "law":
        x = np.linspace(0.05, 3.0, n)
        y = 2.0 * x / (0.5 + x)
    elif case == "covariate":
        t = np.linspace(0.0, 3.0, n)
        z = rng.uniform(-1.0, 1.0, n)
        y = 2.0 * np.exp(-0.8 * t) + 0.5 * np.tanh(2.0 * z) + noise * rng.standard_normal(n)
        return np.stack([t, z], 1).astype("float32"), y[:, None].astype("float32")
    else:
        x = np.linspace(0.0, 3.0, n)
        y = 2.0 * np.exp(-0.8 * x) + (0.3 * np.sin(2 * x) if case == "hybrid" else 0.0)
    y = y + noise * rng.standard_normal(n)
    return x[:, None].astype("float32"), y[:, None].astype("float32")


def _model(case, seed, sam):
    inputs = keras.Input((2,) if case == "covariate" else (1,))
    if case == "covariate":
        layer = kh.ScientificLayer(decay_of_first_column, [
            kh.PhysicalConstant("A", 1.0, constraint="positive"),
            kh.PhysicalConstant("k", 0.4, constraint="positive")])
        init = keras.initializers.GlorotUniform(seed)
        net = keras.Sequential([keras.layers.Dense(16, "tanh", kernel_initializer=init),
                                keras.layers.Dense(1, kernel_initializer=init)])
        return kh.HybridModel(inputs, layer(inputs) + net(inputs[:, 1:]), sam=sam)
    if case == "law":
        layer = kh.ScientificLayer(mm_law, [kh.PhysicalConstant("Vm", 1.0, constraint="positive"),
                                            kh.PhysicalConstant("K", 1.0, constraint="positive")])
        out = layer(inputs)
    else:
        layer = kh.ScientificLayer(decay_law, [kh.PhysicalConstant("A", 1.0, constraint="positive"),
                                               kh.PhysicalConstant("k", 0.4, constraint="positive")])
        out = layer(inputs)
        if case == "hybrid":
            init = keras.initializers.GlorotUniform(seed)
            net = keras.Sequential([keras.layers.Dense(16, "tanh", kernel_initializer=init),
                                    keras.layers.Dense(1, kernel_initializer=init)])
            out = out + net(inputs)
    return kh.HybridModel(inputs, out, sam=sam)


def _numpy_fit(case, x, y):
    """Float64 Gauss-Newton least squares (physics-only cases)."""
    x, y = x[:, 0].astype("float64"), y[:, 0].astype("float64")
    # Started near the truth: Gauss-Newton then reaches the least-squares minimum.
    c = np.array([1.8, 0.45]) if case == "law" else np.array([1.8, 0.7])
    for _ in range(100):
        if case == "law":
            f = c[0] * x / (c[1] + x)
            j = np.stack([x / (c[1] + x), -c[0] * x / (c[1] + x) ** 2], 1)
        else:
            e = np.exp(-c[1] * x)
            f, j = c[0] * e, np.stack([e, -c[0] * x * e], 1)
        c = c + np.linalg.lstsq(j, y - f, rcond=None)[0]
    return dict(zip(TRUTH[case], c))


def run_algebraic(case, method, replicates, epochs, log=print, numpy_fit=False):
    sam = kh.SAM(rho=0.05, perturb="neural") if method == "sam" else None
    rows = []
    for seed in range(replicates):
        keras.utils.set_random_seed(seed)
        x, y = _data(case, seed)
        model = _model(case, seed, sam)
        start = time.perf_counter()
        if numpy_fit and case not in HYBRIDS:
            layer = next(l for l in model.layers if isinstance(l, kh.ScientificLayer))
            for name, value in _numpy_fit(case, x, y).items():
                layer.set_constant(name, float(value))
            epochs = 0
        model.compile(optimizer=keras.optimizers.Adam(0.03), loss="mse", jit_compile=True)
        # Full-batch steps; the data tiled so that one epoch is all the steps
        # (Keras's per-epoch overhead dominates such small fits).
        if epochs:
            model.fit(np.tile(x, (epochs, 1)), np.tile(y, (epochs, 1)), epochs=1, batch_size=len(x),
                      shuffle=False, verbose=0)
        train = time.perf_counter() - start
        res = kh.constant_uncertainty(model, x, y)
        covers = res.covers(TRUTH[case])
        row = {"seed": seed, "estimates": res.estimates, "intervals": res.intervals,
               "verdicts": res.verdicts, "covers": covers, "train_s": train, "uq_s": res.seconds}
        if case in HYBRIDS:
            # The same fit, the network prior's precision chosen by the evidence.
            ev = kh.constant_uncertainty(model, x, y, prior_precision="evidence")
            row["evidence"] = {"intervals": ev.intervals, "verdicts": ev.verdicts,
                               "covers": ev.covers(TRUTH[case]), "alpha": ev.prior_precision,
                               "gamma": ev.evidence["gamma"]}
        rows.append(row)

    def summarize(get):
        return {
            name: {
                "coverage": float(np.mean([get(r)["covers"][name] for r in rows])),
                "median_estimate": float(np.median([r["estimates"][name] for r in rows])),
                "identified": float(np.mean([get(r)["verdicts"][name] == "identified" for r in rows])),
                "median_relative_width": float(np.median([
                    (get(r)["intervals"][name][1] - get(r)["intervals"][name][0]) / abs(r["estimates"][name])
                    for r in rows])),
            }
            for name in TRUTH[case]
        }

    summary = summarize(lambda r: r)
    out = {"case": case, "method": method, "replicates": replicates, "epochs": epochs,
           "summary": summary, "rows": rows}
    priors = [("default prior", summary)]
    if case in HYBRIDS:
        out["summary_evidence"] = summarize(lambda r: r["evidence"])
        priors.append(("evidence prior", out["summary_evidence"]))
    for label, summ in priors:
        log(f"{case:<8} {method:<4} {replicates} replicates, {label}: " + ", ".join(
            f"{k}: coverage {v['coverage']:.0%}, median {v['median_estimate']:.3f}, "
            f"identified {v['identified']:.0%}, median width {v['median_relative_width']:.3f}"
            for k, v in summ.items()), flush=True)
    return out


def run_pendulum(epochs, seeds, log=print):
    from keras_hybrid.demo import fit_pendulum
    from keras_hybrid.systems import pendulum

    out = []
    for seed in range(seeds):
        data = pendulum.simulate(seed=seed)
        _, y0, obs = data
        for label, sam in (("erm", None), ("sam", kh.SAM(rho=0.3, perturb="neural"))):
            model, _, train = fit_pendulum(sam, epochs=epochs, seed=seed, data=data)
            row = {"seed": seed, "method": label, "epochs": epochs, "train_s": train}
            for network in ("marginal", "fixed"):
                res = kh.constant_uncertainty(model, y0, obs, network=network)
                row[network] = {"estimate": res.estimates["w0"], "interval": res.intervals["w0"],
                                "stderr": res.stderr["w0"], "verdict": res.verdicts["w0"],
                                "notes": res.notes["w0"], "seconds": res.seconds,
                                "covers": res.covers({"w0": 1.0})["w0"], "solver": res.solver}
                log(f"pendulum seed {seed} {label} ({epochs} epochs, {train:.0f} s): {network}: {res}")
            out.append(row)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--cases", default="law,decay,hybrid")
    parser.add_argument("--replicates", type=int, default=30)
    parser.add_argument("--pendulum-epochs", type=int, default=600)
    parser.add_argument("--pendulum-seeds", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--numpy-fit", action="store_true",
                        help="physics-only cases: least squares in NumPy instead of `fit`")
    args = parser.parse_args(argv)
    epochs = 300 if args.quick else 1000
    report = {"algebraic": [], "pendulum": []}
    for case in args.cases.split(","):
        if case == "pendulum":
            report["pendulum"] = run_pendulum(args.pendulum_epochs, args.pendulum_seeds)
            continue
        for method in (("erm", "sam") if case in HYBRIDS else ("erm",)):
            report["algebraic"].append(run_algebraic(case, method, args.replicates, epochs,
                                                     numpy_fit=args.numpy_fit))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
