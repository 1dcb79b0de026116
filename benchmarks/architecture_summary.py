"""Tables of the architecture-agnostic benchmark (issue 11) and its goals.

Reads `keras_hybrid.experiments` JSON reports run with `--architecture`
(several reports of one system and architecture are joined, e.g. a
separate `sam-neural` run), and prints, in Markdown:

- per system and architecture, mean ± std over seeds of the constants'
  relative error and MSE, validation and test MSE and the net share;
- one summary table of the relative error (rows: system and
  architecture; columns: methods);
- the goals, checked per cell: `sam-auto`'s relative error at or below
  plain training's (means); best or tied among `l2`, `minnorm` and
  `sam-auto`, where tied means that the mean ± std intervals overlap
  (`mean - std <= best mean + best std`, std over the seeds with ddof 0),
  with the count under the stricter reading (the means at most the larger
  std apart) beside it (the cells where it is must be >= 75 %); and, per
  seed, its
  validation MSE not above the physics-only reference of its radius path.

The `physics` method fits the same ODE without a network in every
architecture, so one run per system serves all its architectures.

Only the standard library and NumPy are used (no TensorFlow start-up).

Usage:

```
python benchmarks/architecture_summary.py benchmarks/results/pendulum_*_quick3*.json \
    benchmarks/results/duffing_forcing_*_quick3*.json
```
"""

import argparse
import collections
import json

import numpy as np

ORDER = ("physics", "erm", "l2", "minnorm", "sam-neural", "sam-auto")
ARCHITECTURES = ("vector_field", "output", "nonadditive")


def load(paths):
    """`{(system, architecture): {"results": [...], "not_applicable": set, "hyper": {...}}}`."""
    cells = collections.OrderedDict()
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        key = (report["system"], report["config"].get("architecture", "vector_field"))
        cell = cells.setdefault(key, {"results": [], "not_applicable": set(), "complete": True, "files": []})
        cell["results"] += report["results"]
        cell["not_applicable"] |= set(report.get("not_applicable", []))
        cell["complete"] &= bool(report.get("complete", False))
        cell["files"].append(path)
    # The physics part alone does not depend on the architecture.
    for (system, _), cell in cells.items():
        if not any(r["method"] == "physics" for r in cell["results"]):
            for (other, _), donor in cells.items():
                rows = [r for r in donor["results"] if r["method"] == "physics"]
                if other == system and rows:
                    cell["results"] = rows + cell["results"]
                    break
    return collections.OrderedDict(
        sorted(cells.items(), key=lambda kv: (kv[0][0] != "pendulum", kv[0][0], ARCHITECTURES.index(kv[0][1])))
    )


def stats(cell, method, metric):
    values = [r[metric] for r in cell["results"] if r["method"] == method and metric in r]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values)), len(values)


def hyper(cell, method):
    rows = [r for r in cell["results"] if r["method"] == method]
    if method == "sam-auto":
        return "rho=" + "/".join(f"{r['hyperparameter'].get('rho', 0):g}" for r in rows)
    return ", ".join(f"{k}={v:g}" for k, v in rows[0]["hyperparameter"].items()) or "-"


def fmt(s, digits=3):
    if s is None:
        return "-"
    mean, std, n = s
    return f"{mean:.{digits}g} ± {std:.2g}" + ("" if n == 3 else f" (n={n})")


def cell_tables(cells):
    out = []
    for (system, arch), cell in cells.items():
        out.append(f"#### `{system}`, `--architecture {arch}`" + ("" if cell["complete"] else " (incomplete)"))
        out.append("")
        out.append("| method | hyperparameter | rel. error | param. MSE | val MSE | test MSE | net share |")
        out.append("|---|---|---|---|---|---|---|")
        for method in ORDER:
            if method in cell["not_applicable"]:
                out.append(f"| {method} | n/a | n/a | n/a | n/a | n/a | n/a |")
                continue
            if stats(cell, method, "param_rel_error") is None:
                continue
            out.append(
                f"| {method} | {hyper(cell, method)} | {fmt(stats(cell, method, 'param_rel_error'))} | "
                f"{fmt(stats(cell, method, 'param_mse'))} | {fmt(stats(cell, method, 'val_mse'))} | "
                f"{fmt(stats(cell, method, 'test_mse'))} | {fmt(stats(cell, method, 'net_share'))} |"
            )
        out.append("")
    return "\n".join(out)


def summary_table(cells, metric="param_rel_error"):
    out = ["| system | architecture | " + " | ".join(ORDER) + " |", "|---|---|" + "---|" * len(ORDER)]
    for (system, arch), cell in cells.items():
        found = {m: stats(cell, m, metric) for m in ORDER if m not in cell["not_applicable"]}
        found = {m: s for m, s in found.items() if s is not None}
        best = min(found, key=lambda m: found[m][0]) if found else None
        row = []
        for m in ORDER:
            if m in cell["not_applicable"]:
                row.append("n/a")
            elif m not in found:
                row.append("-")
            else:
                text = fmt(found[m])
                if m == best:
                    text = f"**{text}**"
                elif found[m][0] - found[m][1] <= found[best][0] + found[best][1]:
                    text += " ="
                row.append(text)
        out.append(f"| {system} | {arch} | " + " | ".join(row) + " |")
    return "\n".join(out)


def goals(cells):
    """Markdown table of the three goals per cell, and the totals."""
    out = ["| system | architecture | sam-auto <= erm (rel. error) | best or tied vs l2, minnorm | "
           "val MSE <= physics-only (per seed) |", "|---|---|---|---|---|"]
    counts = collections.Counter()
    for (system, arch), cell in cells.items():
        auto = stats(cell, "sam-auto", "param_rel_error")
        erm = stats(cell, "erm", "param_rel_error")
        if auto is None:
            out.append(f"| {system} | {arch} | not run | not run | not run |")
            continue
        counts["cells"] += 1
        g1 = erm is not None and auto[0] <= erm[0]
        counts["g1"] += g1
        rivals = {m: stats(cell, m, "param_rel_error") for m in ("l2", "minnorm")
                  if m not in cell["not_applicable"]}
        rivals = {m: s for m, s in rivals.items() if s is not None}
        pool = {**rivals, "sam-auto": auto}
        best = min(pool, key=lambda m: pool[m][0])
        g2 = best == "sam-auto" or auto[0] - auto[1] <= pool[best][0] + pool[best][1]
        counts["g2"] += g2
        # The stricter reading: the means differ by at most one standard
        # deviation (the larger of the two).
        counts["g2_strict"] += best == "sam-auto" or auto[0] - pool[best][0] <= max(auto[1], pool[best][1])
        rows = [r for r in cell["results"] if r["method"] == "sam-auto"]
        margins = []
        for r in rows:
            ref = (r.get("radius_path") or {}).get("physics_only") or {}
            if "val_loss" in ref:
                margins.append(r["val_mse"] / ref["val_loss"])
        g3 = bool(margins) and all(m <= 1.0 + 1e-6 for m in margins)
        counts["g3"] += g3
        erm_text = "-" if erm is None else f"{erm[0]:.3g}"
        out.append(
            f"| {system} | {arch} | {'yes' if g1 else 'no'} ({auto[0]:.3g} vs {erm_text}) | "
            f"{'yes' if g2 else 'no'} (best: {best} {pool[best][0]:.3g} ± {pool[best][1]:.2g}) | "
            f"{'yes' if g3 else 'no'} (sam-auto / physics-only val MSE: "
            f"{', '.join(f'{m:.2g}' for m in margins)}) |"
        )
    n = counts["cells"]
    if n:
        out.append("")
        out.append(
            f"Cells: {n}. sam-auto <= erm: {counts['g1']}/{n}; best or tied vs l2/minnorm: "
            f"{counts['g2']}/{n} ({100 * counts['g2'] / n:.0f} %, goal >= 75 %; tied: the mean "
            f"± std intervals overlap), {counts['g2_strict']}/{n} with the means at most one std "
            f"apart; validation not above physics-only: {counts['g3']}/{n}."
        )
    return "\n".join(out)


def radius_table(cells):
    """`sam-auto`'s radius paths: per radius, mean over seeds of the
    constants' relative error, of the validation MSE relative to plain
    training's (radius 0) and how often the radius was chosen."""
    out = ["| system | architecture | radius | rel. error | val MSE / val MSE at 0 | chosen |",
           "|---|---|---|---|---|---|"]
    for (system, arch), cell in cells.items():
        rows = [r for r in cell["results"] if r["method"] == "sam-auto" and "radius_path" in r]
        if not rows:
            continue
        truths = rows[0]["true_constants"]
        per_rho = collections.defaultdict(lambda: {"rel": [], "ratio": [], "chosen": 0})
        for r in rows:
            path = r["radius_path"]
            base = {row["seed"]: row["val_loss"] for row in path["rows"] if row["rho"] == 0}
            entries = [(row["rho"], row) for row in path["rows"]]
            if path.get("physics_only"):
                entries.append(("physics", path["physics_only"]))
            for rho, row in entries:
                rel = np.mean([abs(row["constants"][k] - v) / abs(v) for k, v in truths.items()])
                per_rho[rho]["rel"].append(rel)
                per_rho[rho]["ratio"].append(row["val_loss"] / base.get(row["seed"], base[min(base)]))
            per_rho[path["chosen"]]["chosen"] += 1
        for rho, d in per_rho.items():
            label = rho if rho == "physics" else f"{rho:g}"
            out.append(
                f"| {system} | {arch} | {label} | {np.mean(d['rel']):.3g} ± {np.std(d['rel']):.2g} | "
                f"{np.mean(d['ratio']):.3g} ({', '.join(f'{x:.2g}' for x in d['ratio'])}) | "
                f"{d['chosen'] if rho != 'physics' else '-'}/{len(rows)} |"
            )
    return "\n".join(out)


def radius_table_per_seed(cells):
    """`sam-auto`'s radius path of every seed: per radius (and the
    physics-only reference), the constants' relative error, the validation
    MSE relative to plain training's (radius 0) and, when the report has
    them, the validation and test MSE; `chosen` marks the selected radius."""
    out = ["| system | architecture | seed | radius | rel. error | val MSE / val MSE at 0 | val MSE | test MSE | chosen |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (system, arch), cell in cells.items():
        rows = sorted((r for r in cell["results"] if r["method"] == "sam-auto" and "radius_path" in r),
                      key=lambda r: r["seed"])
        for r in rows:
            truths = r["true_constants"]
            path = r["radius_path"]
            base = next(row["val_loss"] for row in path["rows"] if row["rho"] == 0)
            entries = [(f"{row['rho']:g}", row) for row in path["rows"]]
            if path.get("physics_only"):
                entries.append(("physics", path["physics_only"]))
            for label, row in entries:
                rel = np.mean([abs(row["constants"][k] - v) / abs(v) for k, v in truths.items()])
                val = row.get("val_mse", row["val_loss"])
                test = f"{row['test_mse']:.3g}" if "test_mse" in row else "-"
                mark = "yes" if label != "physics" and row["rho"] == path["chosen"] else ""
                out.append(f"| {system} | {arch} | {r['seed']} | {label} | {rel:.3g} | "
                           f"{row['val_loss'] / base:.3g} | {val:.3g} | {test} | {mark} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    cells = load(args.files)
    print(cell_tables(cells))
    print("Relative error of the constants (bold: best mean; `=`: its mean ± std overlaps the best's)\n")
    print(summary_table(cells))
    print("\nConstants' MSE\n")
    print(summary_table(cells, "param_mse"))
    print("\nValidation MSE\n")
    print(summary_table(cells, "val_mse"))
    print("\nGoals\n")
    print(goals(cells))
    print("\nsam-auto radius paths (mean over seeds; physics: the physics-only reference)\n")
    print(radius_table(cells))
    print("\nsam-auto radius paths per seed\n")
    print(radius_table_per_seed(cells))


if __name__ == "__main__":
    main()
