"""Cost of `kh.constant_uncertainty` against the training time, side by
side in one run, on the pendulum hybrid with the demo's settings.

    python benchmarks/uncertainty_cost.py                      # ERM and SAM, 600 epochs
    python benchmarks/uncertainty_cost.py --fits erm --epochs 100 --json out.json
    python benchmarks/uncertainty_cost.py --weights DIR --reference 800   # refit-free, with a reference S

For each fit (ERM, and SAM with rho=0.3 on the network, as in
`keras_hybrid.demo`) the script trains, then computes the marginal report
(`network="marginal"`, the default prior, `method="cg"` as `"auto"` picks
for 4,482 weights) with the compiled solve (`diagnostics.COMPILED_CG =
True`, the default) and with the host iteration it replaced (`False`),
and prints wall and CPU seconds of each (CPU: the process's, all
threads), the conjugate-gradient iterations and the intervals. With
`--epochs` below 600 the ratio is also given for 600 epochs from the
measured time per epoch (stated as such). The load average is printed
before and after each step.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras_hybrid as kh  # noqa: E402
from keras_hybrid import diagnostics  # noqa: E402
from keras_hybrid.demo import DEFAULT_SAM, fit_pendulum  # noqa: E402
from keras_hybrid.systems import pendulum  # noqa: E402

REFERENCE_EPOCHS = 600


def _timed(fn, *args, **kwargs):
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                 "load_before": load, "load_after": os.getloadavg()[0]}


def _report(model, y0, obs, compiled, **kwargs):
    diagnostics.COMPILED_CG = compiled
    try:
        res, cost = _timed(kh.constant_uncertainty, model, y0, obs, **kwargs)
    finally:
        diagnostics.COMPILED_CG = True
    cg = res.solver.get("cg") or [{}]
    row = dict(cost, interval=list(res.intervals["w0"]), estimate=res.estimates["w0"],
               verdict=res.verdicts["w0"], information=float(res.information_marginal[0, 0]),
               information_fixed=float(res.information_fixed[0, 0]),
               iterations=cg[0].get("iterations"), upper=cg[0].get("upper"),
               xla=res.solver.get("xla"), prior=res.prior_source,
               alpha=res.prior_precision, noise_std=res.noise_std)
    return row


def _reference(model, y0, obs, shift, max_iter):
    """The information `S` by conjugate gradients stopped only on the
    Gauss-Radau bracket (1e-2) or `max_iter`: `(lower, upper, iterations)`."""
    from keras_hybrid import uncertainty as un
    from keras_hybrid._data_space import DataSpaceSolver

    entries = diagnostics._constant_entries(model)
    variables = [v for _, v, _ in entries] + diagnostics._network_variables(model)
    res = diagnostics._Residuals(model, variables, y0, obs, None, None)
    solver = DataSpaceSolver(res, len(entries))
    _, jc = solver.columns()
    solver.set_inverse_shift(1.0 / np.asarray(shift, "float64"))
    _, info = un.conjugate_gradient(solver.matvec, jc[:, 0], tol=1e-2, max_iter=max_iter,
                                    quadratic=True, delay=max_iter + 1, eig_lower=1.0)
    return info["lower"], info["upper"], info["iterations"]


def _line(label, row, train):
    lo, hi = row["interval"]
    bracket = ""
    if row.get("upper"):
        bracket = f", S in [{row['information']:.5g}, {row['upper']:.5g}]"
    return (f"  {label:<28} wall {row['wall_s']:6.1f} s ({row['wall_s'] / train['wall_s']:6.1%}), "
            f"CPU {row['cpu_s']:6.1f} s ({row['cpu_s'] / train['cpu_s']:6.1%}), "
            f"{row['iterations']} it., [{lo:.5f}, {hi:.5f}]{bracket}, load "
            f"{row['load_before']:.1f}->{row['load_after']:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", default="erm,sam", help="comma-separated: erm, sam")
    parser.add_argument("--epochs", type=int, default=REFERENCE_EPOCHS)
    parser.add_argument("--priors", default="default",
                        help="comma-separated: default, evidence (prior_precision)")
    parser.add_argument("--solves", default="compiled,host",
                        help="comma-separated, in this order: compiled, host")
    parser.add_argument("--cg-tol", type=float, default=None,
                        help="cg_tol of the reports (default: the library's)")
    parser.add_argument("--weights", default=None,
                        help="directory: load `pendulum_<fit>.weights.h5` from it instead of training "
                             "(training time then from `pendulum_<fit>.json`), or save them there")
    parser.add_argument("--reference", type=int, default=0,
                        help="also run CG stopped only on the Gauss-Radau bracket (1e-2) or this "
                             "many iterations, to see how far the reports' information is from "
                             "the converged one (0: skip)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    data = pendulum.simulate(seed=0)
    times, y0, obs = data
    rows = []
    print(f"pendulum hybrid, demo settings ({args.epochs} epochs), load {os.getloadavg()}", flush=True)
    for fit in args.fits.split(","):
        sam = {"erm": None, "sam": DEFAULT_SAM}[fit]
        cached = args.weights and os.path.exists(os.path.join(args.weights, f"pendulum_{fit}.json"))
        if cached:
            model = pendulum.build_model(times, seed=0)
            model.load_weights(os.path.join(args.weights, f"pendulum_{fit}.weights.h5"))
            train = json.load(open(os.path.join(args.weights, f"pendulum_{fit}.json")))
        else:
            (model, history, _), train = _timed(fit_pendulum, sam, epochs=args.epochs, seed=0, data=data)
            train["epochs"] = args.epochs
            train["final_loss"] = history.history["loss"][-1]
            if args.weights:
                os.makedirs(args.weights, exist_ok=True)
                model.save_weights(os.path.join(args.weights, f"pendulum_{fit}.weights.h5"))
                json.dump(train, open(os.path.join(args.weights, f"pendulum_{fit}.json"), "w"))
        scale = REFERENCE_EPOCHS / train["epochs"]
        w0 = model.physical_constants()["w0"]
        print(f"{fit}: w0 = {w0:.5f}; training {train['epochs']} epochs: wall {train['wall_s']:.1f} s, "
              f"CPU {train['cpu_s']:.1f} s{' (cached)' if cached else ''}, load "
              f"{train['load_before']:.1f}->{train['load_after']:.1f}", flush=True)
        row = {"fit": fit, "w0": w0, "training": train, "reports": {}}
        for prior in args.priors.split(","):
            kwargs = {} if prior == "default" else {"prior_precision": prior}
            if args.cg_tol is not None:
                kwargs["cg_tol"] = args.cg_tol
            for solve in args.solves.split(","):
                rep = _report(model, y0, obs, solve == "compiled", **kwargs)
                row["reports"][f"{prior}/{solve}"] = rep
                print(_line(f"{prior} prior, {solve}", rep, train), flush=True)
                if scale != 1:
                    print(f"    for {REFERENCE_EPOCHS} epochs (from the time per epoch): wall "
                          f"{rep['wall_s'] / (train['wall_s'] * scale):.1%}, CPU "
                          f"{rep['cpu_s'] / (train['cpu_s'] * scale):.1%}")
            if args.reference:
                res = kh.constant_uncertainty(model, y0, obs, **kwargs)
                (lower, upper, iters), cost = _timed(_reference, model, y0, obs, res.shift, args.reference)
                widen = [np.sqrt(lower / rep["information"]) for rep in row["reports"].values()
                         if rep.get("prior") == res.prior_source]
                row["reports"][f"{prior}/reference"] = dict(cost, lower=lower, upper=upper, iterations=iters)
                print(f"  {prior} prior, reference: S in [{lower:.5g}, {upper:.5g}] after {iters} it. "
                      f"({cost['wall_s']:.0f} s); the reports' intervals are at least "
                      + ", ".join(f"{w:.2f}" for w in widen) + " times as wide as with S = lower bound",
                      flush=True)
        fixed, cost = _timed(kh.constant_uncertainty, model, y0, obs, network="fixed")
        row["fixed"] = dict(cost, interval=list(fixed.intervals["w0"]))
        print(f"  network fixed: wall {cost['wall_s']:.1f} s, [{fixed.intervals['w0'][0]:.5f}, "
              f"{fixed.intervals['w0'][1]:.5f}]", flush=True)
        rows.append(row)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1, default=float)
    return rows


if __name__ == "__main__":
    main()
