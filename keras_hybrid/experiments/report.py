"""Command line of the cross-task table: one row per experiments report
(task), one column per method.

```
python -m keras_hybrid.experiments.report [--metric M] [--methods A,B] REPORT.json ...
```
"""

import argparse
import json

from keras_hybrid.experiments.tables import METRICS, cross_task_table


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_hybrid.experiments.report",
                                     description="Cross-task table of experiments reports.")
    parser.add_argument("--metric", default="param_rel_error", choices=METRICS)
    parser.add_argument("--methods", default=None, help="comma-separated column order")
    parser.add_argument("files", nargs="+", help="JSON reports of `python -m keras_hybrid.experiments`")
    args = parser.parse_args(argv)
    reports = []
    for name in args.files:
        try:
            with open(name) as f:
                report = json.load(f)
        except (OSError, ValueError) as error:
            parser.error(f"cannot read the report {name!r}: {error}")
        if not isinstance(report, dict) or not isinstance(report.get("results"), list):
            parser.error(f"{name!r} is not a report of `python -m keras_hybrid.experiments` "
                         "(no list of results)")
        reports.append(report)
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        present = {r["method"] for rep in reports for r in rep["results"]}
        present |= {m for rep in reports for m in rep.get("not_applicable", [])}
        missing = [m for m in methods if m not in present]
        if not methods or missing:
            parser.error(f"`--methods` must name methods of these reports, {sorted(present)}. "
                         f"Received: --methods {args.methods!r}")
    print(cross_task_table(reports, args.metric, methods))


if __name__ == "__main__":
    main()
