"""The verdict cases of `kh.constant_uncertainty` on the pendulum hybrid:
the fits (cached as weights) and the reports computed from them.

    python benchmarks/trust_verdicts.py fit-path --cache DIR     # radius path, weights per radius
    python benchmarks/trust_verdicts.py samples --cache DIR      # per-sample validation losses of the path
    python benchmarks/trust_verdicts.py fit-path --rhos 0.2,0.5 --add --cache DIR  # more radii
    python benchmarks/trust_verdicts.py fit-pair --cache DIR     # ERM and SAM, the demo's settings
    python benchmarks/trust_verdicts.py fit-duffing --cache DIR  # Duffing, ERM and sam-neural 0.3
    python benchmarks/trust_verdicts.py report --cache DIR       # intervals and verdicts
    python benchmarks/trust_verdicts.py evidence --cache DIR     # Laplace log evidence per radius

Fitting and reporting are separate so that the reports can be recomputed
without refitting. The radius path uses the demo's data (200 trajectories,
seed 0), a random 80/20 training/validation split, the demo's optimizer,
and `--path-epochs` epochs per radius.
"""

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_hybrid as kh  # noqa: E402
from keras_hybrid.demo import fit_pendulum  # noqa: E402
from keras_hybrid.systems import pendulum  # noqa: E402

RHOS = (0.0, 0.03, 0.1, 0.3, 1.0)


def _build(times):
    def build(sam):
        model = pendulum.build_model(times, sam=sam, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=True)
        build.models.append(model)
        return model

    build.models = []
    return build


def fit_path(cache, epochs, rhos=RHOS, add=False):
    """Fits the radius path (`add`: only the radii `rhos`, merged into the
    cached path, which keeps its physics-only reference)."""
    times, y0, obs = pendulum.simulate(seed=0)
    build = _build(times)
    start = time.perf_counter()
    path = kh.radius_path(build, y0, obs, rhos=rhos, epochs=epochs, batch_size=50,
                          physics_only=not add)
    seconds = time.perf_counter() - start
    # One model per radius (one seed), then the physics part alone.
    for rho, model in zip(path.rhos, build.models):
        model.save_weights(os.path.join(cache, f"path_rho{rho:g}.weights.h5"))
    if not add:
        build.models[-1].save_weights(os.path.join(cache, "path_physics.weights.h5"))
    info = path.to_dict()
    info.update(epochs=epochs, seconds=seconds)
    if add:
        with open(os.path.join(cache, "path.json")) as f:
            old = json.load(f)
        if old.get("epochs") != epochs:
            raise ValueError(f"the cached path has {old.get('epochs')} epochs. Received: epochs={epochs}")
        rows = [r for r in old["rows"] if r["rho"] not in path.rhos] + info["rows"]
        merged = kh.RadiusPath.from_dict({**old, "rows": rows, "rule": "paired"})
        info = {**merged.to_dict(), "epochs": epochs,
                "seconds": old.get("seconds", 0.0) + seconds}
        path = merged
    print(path)
    with open(os.path.join(cache, "path.json"), "w") as f:
        json.dump(info, f, indent=1, default=str)


def path_samples(cache):
    """Adds the per-sample validation losses of the cached path's fits
    (from their weights) to `path.json`, which is then read with the
    paired rule; the former file is kept as `path_relative.json`."""
    from keras_hybrid import radius

    times, y0, obs = pendulum.simulate(seed=0)
    _, (xv, yv, _) = radius._split(y0, obs, None, 0.2, 0)
    file = os.path.join(cache, "path.json")
    with open(file) as f:
        info = json.load(f)
    if not os.path.exists(os.path.join(cache, "path_relative.json")):
        with open(os.path.join(cache, "path_relative.json"), "w") as f:
            json.dump(info, f, indent=1, default=str)
    for row in info["rows"]:
        model = pendulum.build_model(times, seed=0)
        model.compile(optimizer="adam", loss="mse")
        model.load_weights(os.path.join(cache, f"path_rho{row['rho']:g}.weights.h5"))
        per_sample = radius._per_sample_losses(model, xv, yv, 50)
        print(f"rho {row['rho']:g}: mean of the per-sample losses {per_sample.mean():.6g}, "
              f"stored validation loss {row['val_loss']:.6g}")
        row["val_losses"] = [float(v) for v in per_sample]
        row["val_se"] = radius._standard_error(None, None, None, None, per_sample)
    path = kh.RadiusPath.from_dict({**info, "rule": "paired"})
    print(path)
    out = path.to_dict()
    out.update(epochs=info.get("epochs"), seconds=info.get("seconds"))
    with open(file, "w") as f:
        json.dump(out, f, indent=1, default=str)


def path_evidence(cache):
    """Laplace log evidence of each cached path fit on its training split:
    could the evidence, rather than the validation loss, tell the radii
    apart? Prior `N(0, RMS^2 / alpha)` on each layer's weights (`RMS` its
    fitted RMS weight) and Gaussian noise, both at the evidence fixed point
    of `constant_uncertainty`; flat prior on the constants (a common
    constant, left out). In the scaled weights `u = w / RMS` (`R = diag(RMS)`;
    the change of variables cancels between the prior and the volume):

        log Z = -RSS / (2 s^2) - n/2 log(2 pi s^2)              (fit)
                - alpha/2 ||u||^2 + P/2 log alpha                (prior)
                - 1/2 log det(R J_w^T J_w R / s^2 + alpha I)      (weights' volume)
                - 1/2 log det(S / s^2)                           (constants' volume)

    with the weights' log-determinant from the same stochastic Lanczos
    quadrature (30 steps, 4 probes) as the evidence fixed point. (Figures
    in benchmarks/README.md before 1 Dec 2026 used one `alpha` for all
    weights.)"""
    from keras_hybrid import diagnostics, radius
    from keras_hybrid.diagnostics.prior import _layer_scales, _weight_spectrum

    times, y0, obs = pendulum.simulate(seed=0)
    (xt, yt, _), _ = radius._split(y0, obs, None, 0.2, 0)
    with open(os.path.join(cache, "path.json")) as f:
        rows = sorted(json.load(f)["rows"], key=lambda r: r["rho"])
    out = []
    print(f"{'rho':>5} {'w0':>7} {'log Z':>10} {'fit':>10} {'prior':>9} {'weights':>9} "
          f"{'constants':>9} {'alpha':>6} {'gamma':>6} {'val MSE':>9}")
    for row in rows:
        model = pendulum.build_model(times, seed=0)
        model.load_weights(os.path.join(cache, f"path_rho{row['rho']:g}.weights.h5"))
        res = kh.constant_uncertainty(model, xt, yt, prior_precision="evidence")
        ev = res.evidence
        alpha, s2 = ev["alpha"], ev["noise_variance"]
        constants = [v for _, v, _ in diagnostics._constant_entries(model)]
        weights = diagnostics._network_variables(model)
        p_c = len(constants)
        p_w = int(sum(np.prod(v.shape) for v in weights))
        products = diagnostics._Residuals(model, constants + weights, xt, yt, None, None)
        nodes, node_weights = _weight_spectrum(products, "cg", None, p_c, p_w, _layer_scales(weights)[0])
        rss = s2 * (res.n - res.effective_parameters)
        _, logdet_c = np.linalg.slogdet(np.atleast_2d(res.information_marginal) / s2)
        terms = {
            "fit": -rss / (2 * s2) - res.n / 2 * math.log(2 * math.pi * s2),
            "prior": -alpha / 2 * ev["weight_sq_norm"] + p_w / 2 * math.log(alpha),
            "weights": -0.5 * float(np.sum(node_weights * np.log(nodes / s2 + alpha))),
            "constants": -0.5 * float(logdet_c),
        }
        r = {"rho": row["rho"], "w0": res.estimates["w0"], "log_evidence": sum(terms.values()),
             **terms, "alpha": alpha, "gamma": ev["gamma"], "noise_std": math.sqrt(s2),
             "val_loss": row["val_loss"]}
        print(f"{r['rho']:>5g} {r['w0']:>7.4f} {r['log_evidence']:>10.1f} {r['fit']:>10.1f} "
              f"{r['prior']:>9.1f} {r['weights']:>9.1f} {r['constants']:>9.2f} {alpha:>6.3g} "
              f"{r['gamma']:>6.1f} {r['val_loss']:>9.3g}", flush=True)
        out.append(r)
    with open(os.path.join(cache, "evidence.json"), "w") as f:
        json.dump(out, f, indent=1)


PAIR_SAMS = {"sam": kh.SAM(rho=0.3, perturb="neural"), "erm": None}


def fit_pair(cache, epochs):
    data = pendulum.simulate(seed=0)
    for label, sam in PAIR_SAMS.items():
        model, _, seconds = fit_pendulum(sam, epochs=epochs, seed=0, data=data)
        print(f"{label}: w0 = {model.physical_constants()['w0']:.5f} ({seconds:.0f} s)")
        model.save_weights(os.path.join(cache, f"pair_{label}.weights.h5"))
        with open(os.path.join(cache, f"pair_{label}.json"), "w") as f:
            json.dump({"epochs": epochs, "seconds": seconds,
                       "w0": model.physical_constants()["w0"]}, f)


def fit_duffing(cache, quick):
    from keras_hybrid.experiments import runner, tasks

    task = tasks.DuffingTask()
    cfg = task.config(quick)
    data = task.data(0, cfg)
    for method, value in (("sam-neural", 0.3), ("erm", None)):
        result, model = runner.run_one(task, cfg, data, method, value, 0)
        print(f"duffing {method}: {result}")
        model.save_weights(os.path.join(cache, f"duffing_{method}.weights.h5"))
        with open(os.path.join(cache, f"duffing_{method}.json"), "w") as f:
            json.dump({"quick": quick, "cfg": cfg, "result": result}, f, default=str)


def _uq_row(label, model, x, y, truth, **kwargs):
    res = kh.constant_uncertainty(model, x, y, **kwargs)
    row = {"label": label, "seconds": res.seconds, "prior_source": res.prior_source,
           "prior_precision": res.prior_precision, "evidence": res.evidence,
           "noise_std": res.noise_std, "constants": {}}
    for name in res.names:
        row["constants"][name] = {
            "estimate": res.estimates[name], "interval": res.intervals[name],
            "statistical": res.statistical_intervals[name],
            "selection": res.selection_ranges.get(name),
            "verdict": res.verdicts[name], "notes": res.notes[name],
            "covers": bool(res.intervals[name][0] <= truth[name] <= res.intervals[name][1]),
            "share": 1.0 - res.information_marginal[res.names.index(name)][res.names.index(name)]
            / res.information_fixed[res.names.index(name)][res.names.index(name)],
        }
    row["cg"] = res.solver.get("cg")
    print(f"--- {label} ({res.seconds:.0f} s, cg {res.solver.get('cg')})\n{res}\n  prior: {res.prior_source}, "
          f"alpha = {res.prior_precision}", flush=True)
    return row


def report(cache, which, cg_tol=None):
    from keras_hybrid import radius

    out_path = os.path.join(cache, "report.json")
    rows = json.load(open(out_path)) if os.path.exists(out_path) else []
    done = {r["label"] for r in rows}

    def add(label, *args, **kwargs):
        if cg_tol is not None:
            # A tolerance check on a few cases (the path does not change the
            # statistical part; the Duffing sam-neural fit is the slowest).
            if "path" in label or not label.startswith(("pendulum sam 600 ep: evidence",
                                                         "pendulum erm 600 ep: evidence")):
                return
            label = f"{label} (cg_tol={cg_tol:g})"
            kwargs.update(cg_tol=cg_tol, cg_max_iter=400)
        if label not in done:
            rows.append(_uq_row(label, *args, **kwargs))
            with open(out_path, "w") as f:
                json.dump(rows, f, indent=1, default=str)

    times, y0, obs = pendulum.simulate(seed=0)
    truth = dict(pendulum.TRUE_CONSTANTS)
    path = None
    if os.path.exists(os.path.join(cache, "path.json")):
        path = radius.RadiusPath.from_dict(json.load(open(os.path.join(cache, "path.json"))))
        print(path)
    if "pair" in which or "pair-sam" in which:
        for label in ("sam", "erm"):
            file = os.path.join(cache, f"pair_{label}.weights.h5")
            if not os.path.exists(file) or ("pair" not in which and label == "erm"):
                continue
            # Built with the training step it was fitted with: the report
            # checks a least-squares fit (no SAM) for convergence.
            model = pendulum.build_model(times, sam=PAIR_SAMS[label], seed=0)
            model.load_weights(file)
            add(f"pendulum {label} 600 ep: default prior", model, y0, obs, truth)
            add(f"pendulum {label} 600 ep: evidence", model, y0, obs, truth,
                prior_precision="evidence")
            if path is not None:
                add(f"pendulum {label} 600 ep: evidence + path", model, y0, obs, truth,
                    prior_precision="evidence", path=path)
                add(f"pendulum {label} 600 ep: default prior + path", model, y0, obs, truth,
                    path=path)
    if "path" in which and path is not None:
        (xt, yt, _), _ = radius._split(y0, obs, None, 0.2, 0)
        for rho in path.rhos:
            model = pendulum.build_model(times, seed=0)
            model.load_weights(os.path.join(cache, f"path_rho{rho:g}.weights.h5"))
            add(f"pendulum path rho={rho:g}: evidence + path", model, xt, yt, truth,
                prior_precision="evidence", path=path)
            add(f"pendulum path rho={rho:g}: default prior", model, xt, yt, truth)
    if "duffing" in which:
        from keras_hybrid.experiments import methods, tasks

        task = tasks.DuffingTask()
        for method, value in (("sam-neural", 0.3), ("erm", None)):
            file = os.path.join(cache, f"duffing_{method}.weights.h5")
            if not os.path.exists(file):
                continue
            info = json.load(open(os.path.join(cache, f"duffing_{method}.json")))
            cfg = info["cfg"]
            data = task.data(0, cfg)
            model, _ = task.build(cfg, methods.training_for(method, value), 0, data["times"])
            model.load_weights(file)
            x, y = data["train"]
            for prior in (None, "evidence"):
                add(f"duffing {method}: {prior or 'default'} prior", model, x, y,
                    task.true_constants, prior_precision=prior)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("fit-path", "samples", "fit-pair", "fit-duffing", "report", "evidence"))
    parser.add_argument("--rhos", default=None,
                        help="fit-path: comma-separated radii (default 0,0.03,0.1,0.3,1)")
    parser.add_argument("--add", action="store_true",
                        help="fit-path: fit only --rhos and merge them into the cached path")
    parser.add_argument("--which", default="pair,path,duffing",
                        help="report: which fits (pair, pair-sam: the SAM fit of the pair only, path, duffing)")
    parser.add_argument("--cg-tol", type=float, default=None,
                        help="report: conjugate-gradient tolerance (default: the library's)")
    parser.add_argument("--quick", action="store_true", help="fit-duffing: the task's quick configuration")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--path-epochs", type=int, default=300)
    parser.add_argument("--pair-epochs", type=int, default=600)
    args = parser.parse_args(argv)
    os.makedirs(args.cache, exist_ok=True)
    if args.what == "fit-path":
        rhos = RHOS if args.rhos is None else [float(r) for r in args.rhos.split(",")]
        fit_path(args.cache, args.path_epochs, rhos, add=args.add)
    elif args.what == "samples":
        path_samples(args.cache)
    elif args.what == "fit-pair":
        fit_pair(args.cache, args.pair_epochs)
    elif args.what == "evidence":
        path_evidence(args.cache)
    elif args.what == "fit-duffing":
        fit_duffing(args.cache, args.quick)
    else:
        report(args.cache, args.which.split(","), args.cg_tol)


if __name__ == "__main__":
    main()
