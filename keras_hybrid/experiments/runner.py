"""Training runs, hyperparameter selection, and the sweep protocol."""

import math
import time

import keras
import numpy as np

from keras_hybrid.experiments import methods as methods_lib
from keras_hybrid.experiments.algebraic import ALGEBRAIC_SYSTEMS
from keras_hybrid.experiments.tasks import (
    ARCHITECTURES,
    DuffingForcingTask,
    DuffingTask,
    ForcedPendulumTask,
    PendulumEpisodesTask,
    PendulumImagesTask,
    PendulumTask,
    ReactionDiffusionTask,
    TEST_SEED,
    VAL_SEED_OFFSET,
)

SYSTEMS = {
    "pendulum": PendulumTask,
    "pendulum_episodes": PendulumEpisodesTask,
    "forced_pendulum": ForcedPendulumTask,
    "pendulum_images": PendulumImagesTask,
    "duffing": DuffingTask,
    "duffing_forcing": DuffingForcingTask,
    "reaction_diffusion": ReactionDiffusionTask,
    **ALGEBRAIC_SYSTEMS,
}


def _mse(model, x, y, batch_size):
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.square(pred - y)))


def _build(task, cfg, training, seed, data):
    if hasattr(task, "build_from_data"):
        return task.build_from_data(cfg, training, seed, data)
    return task.build(cfg, training, seed, data["times"])


def _compile(model, cfg):
    optimizer = keras.optimizers.Adam(cfg["lr"], global_clipnorm=cfg.get("clipnorm"))
    model.compile(optimizer=optimizer, loss="mse", jit_compile=cfg.get("jit", True),
                  steps_per_execution=cfg.get("steps_per_execution", 1))
    return model


def _fit_arrays(cfg, data, epochs):
    """`(x, y, epochs, shuffle)` for `fit`. With `cfg["repeat"] = k` the
    training set is tiled `k` times and read in order, so that one epoch
    is `k` full-batch steps (Keras's per-epoch overhead dominates on a
    dozen points); the number of steps stays `epochs`."""
    x, y = data["train"]
    k = int(cfg.get("repeat", 1))
    if k == 1:
        return x, y, epochs, True
    if epochs % k:
        raise ValueError(f"`epochs` must be a multiple of repeat={k}. Received: epochs={epochs}")
    return np.tile(x, (k, 1)), np.tile(y, (k, 1)), epochs // k, False


def _finish_result(task, cfg, data, method, value, seed, model, part, seconds):
    result = {"method": method, "seed": int(seed)}
    hyper = methods_lib.METHODS[method][0]
    result["hyperparameter"] = {} if hyper is None else {hyper: value}
    result.update(task.evaluate(model, part, data))
    result["val_mse"] = _mse(model, *data["val"], cfg["batch_size"])
    result["test_mse"] = _mse(model, *data["test"], cfg["batch_size"])
    result["seconds"] = seconds
    return result


def run_one(task, cfg, data, method, value, seed, epochs=None):
    """Trains one model and returns its result dict (and the model)."""
    if method == "sam-auto":
        return run_auto(task, cfg, data, seed, epochs=epochs)
    training = methods_lib.training_for(method, value, encoder_layers=getattr(task, "encoder_layers", ()))
    keras.utils.set_random_seed(seed)
    model, part = _build(task, cfg, training, seed, data)
    _compile(model, cfg)
    x, y, n_epochs, shuffle = _fit_arrays(cfg, data, epochs or cfg["epochs"])
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=cfg["batch_size"], epochs=n_epochs, shuffle=shuffle,
                        verbose=0).history
    seconds = time.perf_counter() - start
    result = _finish_result(task, cfg, data, method, value, seed, model, part, seconds)
    # Steps the non-finite policy skipped, or where SAM fell back to the
    # plain gradient: a run made mostly of them did not train as labelled.
    for key in ("skipped_steps", "sam_fallbacks"):
        if key in history:
            result[key] = int(sum(history[key]))
    samples = len(keras.tree.flatten(x)[0])  # inputs may be a list or dict of arrays
    result["steps"] = int(n_epochs * math.ceil(samples / cfg["batch_size"]))
    return result, model


def run_auto(task, cfg, data, seed, epochs=None):
    """`sam-auto`: neural-only SAM whose radius `keras_hybrid.radius_path`
    chooses from this seed's training and validation data only (the
    library's rule, `keras_hybrid.choose_radius(rule="paired")`: the
    largest radius not significantly worse than the best one by a
    one-sided paired test (signed-rank, or t with too few samples) on the
    per-trajectory (per-point) validation losses, Holm's correction at
    level 0.05, and not worse than the physics part alone). A task may
    set `auto_rule = "relative"` for the
    former rule (within the larger of `auto_tolerance` and two standard
    errors of the best loss).

    `result["radius_path"]` is the whole `RadiusPath.to_dict()` (so that
    `keras_hybrid.RadiusPath.from_dict` restores it and another selection
    rule can be applied to it offline); each row, and the physics-only
    reference, also gets the `val_mse` and `test_mse` of its model (and the
    reference its `val_se`)."""
    from keras_hybrid.radius import _standard_error, radius_path

    parts, built = {}, []

    def build_model(sam):
        training = methods_lib.Training(sam, None, 0.0)
        model, part = _build(task, cfg, training, seed, data)
        parts[id(model)] = part
        built.append(model)
        return _compile(model, cfg)

    x, y, n_epochs, shuffle = _fit_arrays(cfg, data, epochs or cfg["epochs"])
    start = time.perf_counter()
    path = radius_path(
        build_model, x, y, rhos=getattr(task, "auto_rhos", None), validation_data=data["val"],
        epochs=n_epochs, seeds=[seed], tolerance=getattr(task, "auto_tolerance", 0.25),
        rule=getattr(task, "auto_rule", "paired"),
        physics_only=getattr(task, "additive", True), batch_size=cfg["batch_size"], shuffle=shuffle,
    )
    seconds = time.perf_counter() - start
    model = path.best_model
    result = _finish_result(task, cfg, data, "sam-auto", float(path.chosen), seed, model, parts[id(model)], seconds)
    stored = path.to_dict()
    # One model per row, in order (one seed), then the physics-only reference.
    rows = list(stored["rows"]) + ([stored["physics_only"]] if stored["physics_only"] else [])
    if len(built) == len(rows):
        for row, fitted in zip(rows, built):
            row["val_mse"] = _mse(fitted, *data["val"], cfg["batch_size"])
            row["test_mse"] = _mse(fitted, *data["test"], cfg["batch_size"])
        if stored["physics_only"]:
            stored["physics_only"]["val_se"] = _standard_error(built[-1], *data["val"], cfg["batch_size"])
    result["radius_path"] = stored
    return result, model


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_run_options(system, standardize=False, architecture=None, epochs=None):
    """Raises a `ValueError` when `standardize` or `architecture` is given
    for a system that does not have it, or `epochs` is not a multiple of
    the steps a system packs into one epoch (before anything runs)."""
    if system not in SYSTEMS:
        raise ValueError(f"`system` must be one of {sorted(SYSTEMS)}. Received: system={system!r}")
    repeat = int(SYSTEMS[system]().config(True).get("repeat", 1))
    if epochs is not None and _is_integer(epochs) and epochs % repeat:
        raise ValueError(
            f"`epochs` on {system} counts full-batch steps, run {repeat} per epoch: it must be a "
            f"multiple of {repeat}. Received: epochs={epochs}"
        )
    if standardize and system not in ALGEBRAIC_SYSTEMS:
        raise ValueError(
            f"`standardize` is available on the algebraic tasks {sorted(ALGEBRAIC_SYSTEMS)} only. "
            f"Received: system={system!r}, standardize={standardize!r}"
        )
    if architecture is not None and architecture not in getattr(SYSTEMS[system], "architectures", ()):
        supported = sorted(name for name, cls in SYSTEMS.items() if getattr(cls, "architectures", ()))
        raise ValueError(
            f"`architecture` must be one of {list(ARCHITECTURES)}, on the systems {supported} only. "
            f"Received: system={system!r}, architecture={architecture!r}"
        )


def check_run_numbers(seeds=1, epochs=None, tolerance=0.25, first_seed=0, value=None):
    """Raises a `ValueError` naming the first of these arguments of
    `run_experiment` that is out of range (a run with 0 epochs would print
    untrained constants as results; a negative slack would select nothing)."""
    if not _is_integer(seeds) or seeds < 1:
        raise ValueError(f"`seeds` must be an integer >= 1. Received: seeds={seeds!r}")
    if epochs is not None and (not _is_integer(epochs) or epochs < 1):
        raise ValueError(f"`epochs` must be None or an integer >= 1. Received: epochs={epochs!r}")
    if not _is_integer(first_seed) or first_seed < 0:
        raise ValueError(f"`first_seed` must be an integer >= 0. Received: first_seed={first_seed!r}")
    if first_seed + seeds > VAL_SEED_OFFSET:
        # The validation data of seed s are drawn with seed s + VAL_SEED_OFFSET
        # (and 2 * VAL_SEED_OFFSET), the test data with TEST_SEED.
        raise ValueError(
            f"`first_seed + seeds` must be at most {VAL_SEED_OFFSET}: a run's validation data "
            f"are drawn with seeds from {VAL_SEED_OFFSET} up and its test data with seed "
            f"{TEST_SEED}, which a training seed must not repeat. Received: "
            f"first_seed={first_seed}, seeds={seeds}"
        )
    numbers = {"tolerance": tolerance} if value is None else {"tolerance": tolerance, "value": value}
    for name, number in numbers.items():
        if isinstance(number, bool) or not isinstance(number, (int, float, np.number)) or not (
            np.isfinite(number) and number >= 0
        ):
            raise ValueError(
                f"`{name}` must be a finite number >= 0. Received: {name}={number!r}"
            )


def run_experiment(system, methods, seeds, quick=False, epochs=None, sweep=None, tolerance=0.25, log=print,
                   on_progress=None, first_seed=0, value=None, standardize=False, architecture=None,
                   jit_compile=None):
    """Runs the comparison; returns `(report dict, last trained model)`.

    Args:
        system: one of `SYSTEMS`.
        methods: list of method names (see `_experiment_methods.METHODS`).
        seeds: number of seeds (0, 1, ...).
        quick: small configuration (minutes). Defaults to `False`.
        epochs: overrides the configuration's number of epochs.
        sweep: sweep hyperparameters on seed 0 and select by validation
            MSE; `None` means: sweep unless `quick`. Defaults to `None`.
        tolerance: slack of the selection rule (`select`). Defaults to
            `0.25`.
        log: progress printer. Defaults to `print`.
        on_progress: optional function called with the partial report
            after every trained model. Defaults to `None`.
        first_seed: seeds are `first_seed, ..., first_seed + seeds - 1`
            (to extend an earlier run). Defaults to `0`.
        value: fixes the hyperparameter of every method (no sweep).
            Defaults to `None`.
        standardize: standardize the correction network's inputs
            (algebraic tasks only). Defaults to `False`.
        architecture: on the systems with an `architectures` attribute
            (`pendulum`, `duffing_forcing`): `"vector_field"` (the
            correction inside the ODE), `"output"` (an additive correction
            of the observed trajectory) or `"nonadditive"` (the trajectory
            times `1 + net`). `None` is `"vector_field"`. Defaults to
            `None`.
        jit_compile: `True` / `False` overrides the task's XLA setting
            (`False`: no XLA compilation, which takes most of a one-epoch
            smoke run's time on an ODE task; steps then run slower).
            `None` keeps the task's. Defaults to `None`.
    """
    if system not in SYSTEMS:
        raise ValueError(f"`system` must be one of {list(SYSTEMS)}. Received: system={system!r}")
    methods_lib.check_methods(methods)
    check_run_numbers(seeds=seeds, epochs=epochs, tolerance=tolerance, first_seed=first_seed,
                      value=value)
    task = SYSTEMS[system]()
    cfg = task.config(quick)
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    if jit_compile is not None:
        if not isinstance(jit_compile, bool):
            raise ValueError(f"`jit_compile` must be True, False or None. Received: jit_compile={jit_compile!r}")
        cfg["jit"] = jit_compile
    check_run_options(system, standardize=standardize, architecture=architecture, epochs=epochs)
    if standardize:
        cfg["standardize"] = True
    if architecture is not None:
        cfg["architecture"] = architecture
    sweep = (not quick) if sweep is None else sweep
    datasets = {}

    def data_for(seed):
        if seed not in datasets:
            datasets[seed] = task.data(seed, cfg)
        return datasets[seed]

    value_fixed = value
    results, sweep_rows, selection, model = [], [], {}, None
    report = {
        "system": system,
        "quick": bool(quick),
        "config": cfg,
        "tolerance": tolerance,
        "selection": selection,
        "sweep": sweep_rows,
        "results": results,
        "not_applicable": [],
    }

    def progress():
        if on_progress is not None:
            on_progress(report)

    for method in methods:
        hyper, default = methods_lib.METHODS[method]
        reuse = None
        if not getattr(task, "applicable", lambda m, c: True)(method, cfg):
            log(f"  {method}: n/a")
            report["not_applicable"].append(method)
            continue
        if method == "sam-auto":
            # Chosen per seed by `radius_path` from that seed's data.
            if value_fixed is not None:
                log(f"  sam-auto: value={value_fixed:g} not used (the radius is chosen per seed)")
            hyper, value = None, None
            selection[method] = "radius_path per seed"
        elif hyper is not None and value_fixed is not None:
            value = value_fixed
        elif hyper is not None and sweep and len(task.sweeps.get(method, [default])) == 1:
            value = task.sweeps.get(method, [default])[0]
        elif hyper is not None and sweep:
            rows = []
            for value in task.sweeps[method]:
                result, model = run_one(task, cfg, data_for(0), method, value, 0)
                log(f"  sweep {method} {hyper}={value:g}: val_mse={result['val_mse']:.3e} "
                    f"param_rel_error={result['param_rel_error']:.4f} ({result['seconds']:.0f} s)")
                rows.append({"method": method, "value": value, **{k: result[k] for k in (
                    "val_mse", "test_mse", "param_error", "param_rel_error", "param_mse", "net_share", "constants")}})
                rows[-1]["_result"] = result
                sweep_rows.append(rows[-1])
                progress()
            chosen = methods_lib.select(rows, tolerance)
            argmin = methods_lib.select(rows, 0.0)
            for row in rows:
                result = row.pop("_result")
                row["selected"] = row["value"] == chosen
                row["argmin"] = row["value"] == argmin
                if row["selected"]:
                    reuse = result
            value = chosen
        elif hyper is not None:
            value = getattr(task, "defaults", {}).get(method, default)
        else:
            value = None
        if hyper is not None:
            selection[method] = {hyper: value}
        for seed in range(first_seed, first_seed + seeds):
            if seed == 0 and reuse is not None:
                result = reuse
            else:
                result, model = run_one(task, cfg, data_for(seed), method, value, seed)
            log(f"  {method} seed={seed}: param_error={result['param_error']:.4g} "
                f"rel={result['param_rel_error']:.4f} test_mse={result['test_mse']:.3e} "
                f"net_share={result['net_share']:.3f} ({result['seconds']:.0f} s)")
            results.append(result)
            progress()
    return report, model
