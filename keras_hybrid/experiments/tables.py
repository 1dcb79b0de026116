"""Text and Markdown tables of an experiments report."""

import numpy as np

from keras_hybrid.experiments import methods as methods_lib

METRICS = ("param_error", "param_rel_error", "param_mse", "test_mse", "val_mse", "net_share", "seconds")


def _method_summaries(report):
    """`(method, hyperparameter text, {metric: (mean, std)})` per method,
    in the order the methods ran (`sam-auto`: the radii it chose)."""
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    for method in methods:
        rows = [r for r in report["results"] if r["method"] == method]
        stats = {k: methods_lib.mean_std([r.get(k, np.nan) for r in rows]) for k in METRICS}
        if method == "sam-auto":
            hyper = "rho=" + "/".join(f"{r['hyperparameter'].get('rho', 0):g}" for r in rows)
        else:
            hyper = ", ".join(f"{k}={v:g}" for k, v in rows[0]["hyperparameter"].items()) or "-"
        yield method, hyper, stats


def format_table(report):
    """Mean ± std over seeds, one row per method."""
    lines = [
        f"{'method':<13} {'hyper':<15} {'param_error':>21} {'rel_error':>17} {'param_mse':>21} "
        f"{'test_mse':>21} {'net_share':>15} {'time[s]':>8}"
    ]
    for method, hyper, stats in _method_summaries(report):
        lines.append(
            f"{method:<13} {hyper:<15} "
            f"{stats['param_error'][0]:>10.3e}±{stats['param_error'][1]:<10.2e} "
            f"{stats['param_rel_error'][0]:>8.4f}±{stats['param_rel_error'][1]:<8.4f} "
            f"{stats['param_mse'][0]:>10.3e}±{stats['param_mse'][1]:<10.2e} "
            f"{stats['test_mse'][0]:>10.3e}±{stats['test_mse'][1]:<10.2e} "
            f"{stats['net_share'][0]:>7.3f}±{stats['net_share'][1]:<7.3f} "
            f"{stats['seconds'][0]:>8.1f}"
        )
    for method in report.get("not_applicable", []):
        lines.append(f"{method:<13} n/a (not defined for this {_not_applicable_scope(report)})")
    lines.extend(_step_notes(report))
    return "\n".join(lines)


def _not_applicable_scope(report):
    return "architecture" if report.get("config", {}).get("architecture") else "system"


def _step_notes(report):
    """A line per method whose runs skipped steps (non-finite) or fell back
    from SAM to the plain gradient: its numbers are not those of the
    method as labelled."""
    notes = []
    for method in dict.fromkeys(r["method"] for r in report["results"]):
        rows = [r for r in report["results"] if r["method"] == method]
        steps = sum(r.get("steps", 0) for r in rows)
        for key, what in (("skipped_steps", "skipped (non-finite)"),
                          ("sam_fallbacks", "took the plain gradient (SAM's pass not finite)")):
            count = sum(r.get(key, 0) for r in rows)
            if count:
                notes.append(f"note: {method}: {count} of {steps} steps {what}")
    return notes


def format_sweep(report):
    lines = [f"{'method':<13} {'value':>8} {'val_mse':>10} {'test_mse':>10} {'param_err':>10} "
             f"{'rel_err':>8} {'net_share':>9}  chosen"]
    for row in report["sweep"]:
        mark = ("tolerance" if row["selected"] else "") + (" argmin" if row["argmin"] else "")
        lines.append(
            f"{row['method']:<13} {row['value']:>8g} {row['val_mse']:>10.3e} {row['test_mse']:>10.3e} "
            f"{row['param_error']:>10.3e} {row['param_rel_error']:>8.4f} {row['net_share']:>9.3f}  {mark.strip()}"
        )
    return "\n".join(lines)


def markdown_tables(report):
    """Markdown tables (sweep and mean ± std per method) of a report."""
    out = []
    if report.get("sweep"):
        out.append("| method | value | val MSE | test MSE | param. error | rel. error | net share | chosen |")
        out.append("|---|---|---|---|---|---|---|---|")
        for row in report["sweep"]:
            mark = ", ".join(m for m, flag in (("rule", row.get("selected")), ("argmin", row.get("argmin"))) if flag)
            out.append(
                f"| {row['method']} | {row['value']:g} | {row['val_mse']:.3e} | {row['test_mse']:.3e} | "
                f"{row['param_error']:.3e} | {row['param_rel_error']:.4f} | {row['net_share']:.3f} | {mark} |"
            )
        out.append("")
    out.append("| method | hyperparameter | param. error | rel. error | param. MSE | val MSE | test MSE | "
               "net share | s/run |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for method, hyper, s in _method_summaries(report):
        out.append(
            f"| {method} | {hyper} | {s['param_error'][0]:.3e} ± {s['param_error'][1]:.1e} | "
            f"{s['param_rel_error'][0]:.4f} ± {s['param_rel_error'][1]:.4f} | "
            f"{s['param_mse'][0]:.3e} ± {s['param_mse'][1]:.1e} | "
            f"{s['val_mse'][0]:.3e} ± {s['val_mse'][1]:.1e} | "
            f"{s['test_mse'][0]:.3e} ± {s['test_mse'][1]:.1e} | "
            f"{s['net_share'][0]:.3f} ± {s['net_share'][1]:.3f} | {s['seconds'][0]:.0f} |"
        )
    for method in report.get("not_applicable", []):
        out.append(f"| {method} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | - |")
    return "\n".join(out)


def cross_task_table(reports, metric="param_rel_error", methods=None):
    """Markdown table, one row per report (task), one column per method:
    mean ± std over seeds of `metric`; the best mean of a row in bold,
    and `=` marking methods whose mean ± std overlaps the best's."""
    methods = methods or list(dict.fromkeys(
        [r["method"] for rep in reports for r in rep["results"]]
        + [m for rep in reports for m in rep.get("not_applicable", [])]))
    out = ["| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for rep in reports:
        stats = {m: s[metric] for m, _, s in _method_summaries(rep)}
        label = rep["system"] + (f" ({rep['config']['architecture']})" if rep["config"].get("architecture") else "")
        finite = {m: v for m, v in stats.items() if np.isfinite(v[0])}
        best = min(finite, key=lambda m: finite[m][0]) if finite else None
        cells = []
        for m in methods:
            if m in rep.get("not_applicable", []):
                cells.append("n/a")
            elif m not in stats:
                cells.append("-")
            else:
                mean, std = stats[m]
                text = f"{mean:.3g} ± {std:.2g}"
                if m == best:
                    text = f"**{text}**"
                elif best is not None and mean - std <= finite[best][0] + finite[best][1]:
                    text += " ="
                cells.append(text)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)
