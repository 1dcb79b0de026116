"""SAM step time relative to a plain Keras step.

Two workloads, each measured with and without `jit_compile`:

* an MLP 128 -> 1024 -> 1024 -> 10 (ReLU), batch 1024, MSE loss: plain
  `keras.Sequential`, the same network wrapped in `kh.SAMModel(sam=None)`
  (our plain step, with its non-finite guard) and in `kh.SAMModel` (SAM);
* the damped-pendulum ODE hybrid (`keras_hybrid.systems.pendulum`, 100 time
  points, RK4, 2x64 tanh correction), batch 50: a plain functional
  `keras.Model`, `kh.HybridModel(sam=None)` and `kh.HybridModel` (SAM).

SAM is `kh.SAM(rho=0.05, perturb="all")` (one global norm over all weights); the optimizer
is Adam for every variant. SAM needs two forward-backward passes per step,
so about 2x the plain step is its limit; the goals: SAM / Keras plain
<= 2.0x and our plain step / Keras's <= 1.05x, in wall time.

`--guard-cost` adds variants of the SAM and plain steps without the check
that rolls back an update making weights or optimizer state non-finite
(`keras_hybrid.non_finite`), to measure what that check costs, and a SAM
step without that check and without the fallback to the plain gradient
(`keras_hybrid.models._select`, a `cond` that waits for the finiteness of
every perturbed gradient before the optimizer may start): what removing
that wait could gain at most.

Run:

```
python benchmarks/sam_overhead.py --quick   # smoke run, < 2 minutes
python benchmarks/sam_overhead.py           # full run
```
"""

import argparse
import contextlib

import _common as common
import keras

import keras_hybrid as kh
from keras_hybrid import models, non_finite

GOAL = 2.0
PLAIN_GOAL = 1.05
KINDS = ("plain", "ours plain", "SAM")


@contextlib.contextmanager
def _unguarded():
    # The apply without the post-update check (traced while this is active).
    def apply(optimizer, gradients, variables, finite):
        optimizer.apply_gradients(zip(gradients, variables))
        return keras.ops.convert_to_tensor(True)

    saved = non_finite._apply_and_keep_if_finite
    non_finite._apply_and_keep_if_finite = apply
    try:
        yield
    finally:
        non_finite._apply_and_keep_if_finite = saved


@contextlib.contextmanager
def _without_fallback():
    # The perturbed gradients are applied whatever their finiteness.
    saved = models._select
    models._select = lambda condition, if_true, if_false: list(if_false)
    try:
        with _unguarded():
            yield
    finally:
        models._select = saved


def mlp_variants(steps, jit_modes, kinds):
    x, y = common.mlp_data(steps * common.MLP_BATCH)
    variants = {}
    for jit in jit_modes:
        for kind in kinds:
            model = common.mlp()
            if kind.startswith("ours plain"):
                model = kh.SAMModel(model, sam=None)
            elif kind.startswith("SAM"):
                model = kh.SAMModel(model, sam=kh.SAM(rho=0.05, perturb="all"))
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=jit)
            variants[(kind, jit)] = _runner(model, x, y, common.MLP_BATCH, steps, kind)
    return variants


def pendulum_variants(steps, jit_modes, kinds, batch_size=50):
    times, y0, observed = common.pendulum_setup(n_steps=100, n_trajectories=steps * batch_size)
    variants = {}
    for jit in jit_modes:
        for kind in kinds:
            if kind.startswith("SAM"):
                model = common.pendulum_model(times, sam=kh.SAM(rho=0.05, perturb="all"))
            elif kind.startswith("ours plain"):
                model = common.pendulum_model(times, sam=None)
            else:
                hybrid = common.pendulum_model(times, sam=None)
                model = keras.Model(hybrid.inputs, hybrid.outputs, name="plain_pendulum")
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=jit)
            variants[(kind, jit)] = _runner(model, y0, observed, batch_size, steps, kind)
    return variants


def _runner(model, x, y, batch_size, steps, kind):
    def run():
        context = (_without_fallback() if kind.endswith("no fallback") else
                   _unguarded() if kind.endswith("unguarded") else contextlib.nullcontext())
        with context:
            return common.epoch_step_time(model, x, y, batch_size, steps)

    return run


def report(title, results, jit_modes, kinds):
    print(f"\n{title}: step time, median (min-max) over rounds; wall/CPU: median per round")
    for (kind, jit), values in results.items():
        print(f"  {kind:<20} jit_compile={str(jit):<5} {common.format_timings(values)}")
    ratios = {}
    for jit in jit_modes:
        for kind, reference, goal in (("SAM", "plain", GOAL), ("ours plain", "plain", PLAIN_GOAL),
                                      ("SAM", "SAM unguarded", None),
                                      ("SAM unguarded", "SAM no fallback", None),
                                      ("ours plain", "ours plain unguarded", None)):
            if kind in kinds and reference in kinds:
                ratios[(f"{kind} / {reference}", jit)] = (
                    common.timing_ratios(results[(kind, jit)], results[(reference, jit)]), goal)
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    parser.add_argument("--workload", choices=("all", "mlp", "pendulum"), default="all")
    parser.add_argument("--no-jit-only", action="store_true", help="skip jit_compile=True")
    parser.add_argument("--guard-cost", action="store_true",
                        help="add SAM and our plain step without the non-finite rollback check, "
                             "and SAM without it and without the fallback")
    args = parser.parse_args(argv)

    rounds = args.rounds or (5 if args.quick else 15)
    kinds = KINDS + (("SAM unguarded", "SAM no fallback", "ours plain unguarded")
                     if args.guard_cost else ())
    mlp_steps, pendulum_steps = (6, 4) if args.quick else (20, 8)
    jit_modes = (False,) if args.no_jit_only else (False, True)
    print(common.machine_line())
    print(f"{'quick' if args.quick else 'full'} mode: {rounds} measured rounds after 1 warm-up "
          f"round; MLP {mlp_steps} steps/epoch (batch {common.MLP_BATCH}), pendulum "
          f"{pendulum_steps} steps/epoch (batch 50, 100 time points, RK4)")

    all_ratios = {}
    if args.workload in ("all", "mlp"):
        results = common.interleaved(mlp_variants(mlp_steps, jit_modes, kinds), rounds)
        all_ratios["MLP 2x1024"] = report("MLP 2x1024, batch 1024", results, jit_modes, kinds)
    if args.workload in ("all", "pendulum"):
        results = common.interleaved(pendulum_variants(pendulum_steps, jit_modes, kinds), rounds)
        all_ratios["pendulum hybrid"] = report("pendulum ODE hybrid", results, jit_modes, kinds)

    print(f"\nRatios of step times, wall (headline) and CPU: median of per-round ratios "
          f"(min-max over {rounds} rounds); goals: SAM / plain <= {GOAL}x, ours plain / plain "
          f"<= {PLAIN_GOAL}x (wall)")
    for workload, ratios in all_ratios.items():
        for (name, jit), (spread, goal) in ratios.items():
            verdict = "" if goal is None else common.verdict(spread, lambda r, g=goal: r <= g)
            print(f"  {workload:<16} {name:<24} jit_compile={str(jit):<5} "
                  f"wall {common.format_ratio(spread['wall'])}  CPU {common.format_ratio(spread['cpu'])}"
                  f"  {verdict}")
    print(common.load_line() + " (at the end)")


if __name__ == "__main__":
    main()
