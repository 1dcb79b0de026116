"""Command line of the experiments (`python -m keras_hybrid.experiments`)."""

import argparse
import json
import os
import sys
import tempfile
import time

from keras_hybrid.experiments import methods as methods_lib
from keras_hybrid.experiments.tables import format_sweep, format_table
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
    run (or a value JSON cannot hold) never leaves a half-written report.
    The file gets the permissions a newly created file would (the
    temporary file's are private to the user)."""
    handle, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial",
                                       dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(data, f, indent=1)
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_paths(json_path, export_path=None):
    """Raises before a run when its results could not be written at the
    end: `--json` naming a directory, a path under a file, or a folder
    where no file can be created; `--export` naming something an export
    may not replace (see `export_saved_model`), or the folder holding
    `--json` (the export replaces it). Creates the folder of `--json`."""
    from keras_hybrid.export import _check_path, _check_target

    if not json_path or os.path.isdir(json_path) or json_path.endswith(("/", os.sep)):
        raise ValueError(f"`--json` must name a file. Received: --json {json_path!r}")
    if export_path is not None:
        _check_target(_check_path(export_path, "--export"), overwrite=True)
        export = os.path.abspath(export_path)
        report = os.path.abspath(json_path)
        if report == export or report.startswith(export.rstrip(os.sep) + os.sep):
            raise ValueError(
                "`--json` must not be inside the `--export` folder, which the export replaces. "
                f"Received: --json {json_path!r}, --export {export_path!r}"
            )
    directory = os.path.dirname(os.path.abspath(json_path))
    try:
        os.makedirs(directory, exist_ok=True)
        # The report is written as a temporary file moved into place: try one.
        handle, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(
            f"`--json` must name a file in a folder where files can be created. Received: "
            f"--json {json_path!r} ({error.strerror or error}: {directory!r})"
        ) from None


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
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (on the algebraic tasks: full-batch steps, a multiple of 100)")
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
                          architecture=args.architecture, epochs=args.epochs)
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
    if not report["results"]:
        # Every method was n/a: nothing was fitted, which a script running
        # the CLI must not read as success.
        print(
            f"error: none of the methods {methods} applies to {args.system} "
            f"({', '.join(report['not_applicable'])} n/a): nothing was fitted"
            + (" and nothing exported." if args.export is not None else "."),
            file=sys.stderr,
        )
        raise SystemExit(2)
    if args.export is not None:
        from keras_hybrid.export import export_saved_model

        export_saved_model(model, args.export, overwrite=True)
        print(f"exported the last model to {args.export}")
