"""Command line of the experiments (`python -m keras_hybrid.experiments`)."""

import argparse
import json
import os
import sys
import tempfile
import time

from keras_hybrid.experiments import methods as methods_lib
from keras_hybrid.experiments.report import format_sweep, format_table
from keras_hybrid.experiments.runner import (
    SYSTEMS,
    check_run_numbers,
    check_run_options,
    run_experiment,
)
from keras_hybrid.experiments.tasks import ARCHITECTURES


def write_json(path, data):
    """Writes `data` as JSON to `path` whole or not at all: into a temporary
    file next to it, moved over `path` once complete, so that an interrupted
    run (or a value JSON cannot hold) never leaves a half-written report."""
    handle, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial",
                                       dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def check_output_paths(json_path, export_path=None):
    """Raises before a run when its results could not be written at the
    end: `--json` naming a directory, or `--export` naming something an
    export may not replace (see `export_saved_model`)."""
    from keras_hybrid.export import _check_path, _check_target

    if not json_path or os.path.isdir(json_path):
        raise ValueError(f"`--json` must name a file. Received: --json {json_path!r}")
    if export_path is not None:
        _check_target(_check_path(export_path, "--export"), overwrite=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_hybrid.experiments",
        description="Plain training vs regularizers vs SAM variants on hybrid models.",
    )
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--methods", default=",".join(methods_lib.DEFAULT_METHODS),
                        help="comma-separated subset of " + ",".join(methods_lib.METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small configuration (minutes), no sweep")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--sweep", dest="sweep", action="store_true", default=None,
                        help="sweep hyperparameters (default unless --quick)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false")
    parser.add_argument("--tolerance", type=float, default=0.25,
                        help="selection slack on the validation MSE (0: argmin)")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (to extend a run)")
    parser.add_argument("--value", type=float, default=None,
                        help="fix the hyperparameter (rho or lambda) of the methods; no sweep")
    parser.add_argument("--standardize", action="store_true",
                        help="standardize the correction network's inputs (algebraic tasks)")
    parser.add_argument("--architecture", default=None, choices=list(ARCHITECTURES),
                        help="pendulum, duffing_forcing: where the network enters (default vector_field)")
    parser.add_argument("--no-jit", dest="jit_compile", action="store_false", default=None,
                        help="no XLA compilation (faster start, slower steps: smoke runs, debugging)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: default)")
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--export", default=None, help="SavedModel directory for the last model")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        methods_lib.check_methods(methods)
        check_run_numbers(seeds=args.seeds, epochs=args.epochs, tolerance=args.tolerance,
                          first_seed=args.first_seed, value=args.value)
        check_run_options(args.system, standardize=args.standardize,
                          architecture=args.architecture)
        if args.threads < 0:
            # TensorFlow aborts the process on a negative thread count.
            raise ValueError(f"`threads` must be >= 0. Received: threads={args.threads}")
        check_output_paths(args.json, args.export)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    directory = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(directory, exist_ok=True)

    def write(report, complete):
        report = {k: v for k, v in report.items()}
        report["sweep"] = [{k: v for k, v in r.items() if k != "_result"} for r in report["sweep"]]
        report["complete"] = complete
        write_json(args.json, report)

    start = time.perf_counter()
    print(f"{args.system}: methods={','.join(methods)} seeds={args.seeds} quick={args.quick}", flush=True)
    report, model = run_experiment(
        args.system, methods, args.seeds, quick=args.quick, epochs=args.epochs,
        sweep=args.sweep, tolerance=args.tolerance, log=lambda s: print(s, flush=True),
        on_progress=lambda report: write(report, False), first_seed=args.first_seed, value=args.value,
        standardize=args.standardize, architecture=args.architecture, jit_compile=args.jit_compile,
    )
    report["wall_seconds"] = time.perf_counter() - start
    report["command"] = "python -m keras_hybrid.experiments " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if report["sweep"]:
        print("\nHyperparameter sweep (seed 0; selection uses val_mse only)")
        print(format_sweep(report))
    print(f"\n{args.system}: mean ± std over {args.seeds} seed(s), test set")
    print(format_table(report))
    print(f"wall time {report['wall_seconds']:.0f} s")
    write(report, True)
    if args.export is not None:
        from keras_hybrid.export import export_saved_model

        export_saved_model(model, args.export, overwrite=True)
        print(f"exported the last model to {args.export}")
