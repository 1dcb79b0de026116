"""Merges `keras_hybrid.experiments` JSON reports of one system and prints
their Markdown tables (as in `RESULTS.md`).

A full configuration can be split over processes (e.g. one per group of
methods, to use several cores); this joins their reports.

Usage:

```
python benchmarks/merge_results.py OUT.json IN1.json IN2.json ...
python benchmarks/merge_results.py --print REPORT.json   # tables only
```
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_hybrid.experiments import markdown_tables  # noqa: E402


def merge(reports):
    """One report from several reports of the same system and configuration."""
    systems = {r["system"] for r in reports}
    configs = {json.dumps(r["config"], sort_keys=True) for r in reports}
    if len(systems) != 1 or len(configs) != 1:
        raise ValueError(
            "Reports must share one system and one configuration. "
            f"Received: systems={sorted(systems)}, configs={sorted(configs)}"
        )
    merged = {k: v for k, v in reports[0].items() if k not in ("results", "sweep", "selection", "command")}
    merged["results"] = [row for r in reports for row in r["results"]]
    merged["sweep"] = [row for r in reports for row in r.get("sweep", [])]
    merged["selection"] = {k: v for r in reports for k, v in r.get("selection", {}).items()}
    merged["commands"] = [r.get("command", "") for r in reports]
    merged["wall_seconds"] = sum(r.get("wall_seconds", 0.0) for r in reports)
    merged["complete"] = all(r.get("complete", False) for r in reports)
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the tables of one report")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.print_only:
        with open(args.files[0]) as f:
            print(markdown_tables(json.load(f)))
        return
    if len(args.files) < 2:
        parser.error("give an output file and at least one input file")
    out, inputs = args.files[0], args.files[1:]
    reports = []
    for path in inputs:
        with open(path) as f:
            reports.append(json.load(f))
    merged = merge(reports)
    # Written to a temporary file first, so that a failure leaves no
    # half-written report.
    directory = os.path.dirname(os.path.abspath(out))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(merged, f, indent=1)
    os.replace(f.name, out)
    print(markdown_tables(merged))


if __name__ == "__main__":
    main()
