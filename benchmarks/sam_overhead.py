"""SAM step time relative to a plain Keras step.

Two workloads, each measured with and without `jit_compile`:

* an MLP 128 -> 1024 -> 1024 -> 10 (ReLU), batch 1024, MSE loss: plain
  `keras.Sequential` vs the same network wrapped in `kh.SAMModel`;
* the damped-pendulum ODE hybrid (`keras_hybrid.systems.pendulum`, 100 time
  points, RK4, 2x64 tanh correction), batch 50: a plain functional
  `keras.Model` vs `kh.HybridModel`.

SAM is `kh.SAM(rho=0.05, perturb="all")` (one global norm over all weights); the optimizer
is Adam for both variants. SAM needs two forward-backward passes per step,
so about 2x the plain step is its limit; the goal is <= 2.0x.

Run:

```
python benchmarks/sam_overhead.py --quick   # smoke run, < 2 minutes
python benchmarks/sam_overhead.py           # full run
```
"""

import argparse

import _common as common
import keras

import keras_hybrid as kh

GOAL = 2.0


def mlp_variants(steps, jit_modes):
    x, y = common.mlp_data(steps * common.MLP_BATCH)
    variants = {}
    for jit in jit_modes:
        for kind in ("plain", "SAM"):
            model = common.mlp()
            if kind == "SAM":
                model = kh.SAMModel(model, sam=kh.SAM(rho=0.05, perturb="all"))
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=jit)
            variants[(kind, jit)] = _runner(model, x, y, common.MLP_BATCH, steps)
    return variants


def pendulum_variants(steps, jit_modes, batch_size=50):
    times, y0, observed = common.pendulum_setup(n_steps=100, n_trajectories=steps * batch_size)
    variants = {}
    for jit in jit_modes:
        for kind in ("plain", "SAM"):
            if kind == "SAM":
                model = common.pendulum_model(times, sam=kh.SAM(rho=0.05, perturb="all"))
            else:
                hybrid = common.pendulum_model(times, sam=None)
                model = keras.Model(hybrid.inputs, hybrid.outputs, name="plain_pendulum")
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=jit)
            variants[(kind, jit)] = _runner(model, y0, observed, batch_size, steps)
    return variants


def _runner(model, x, y, batch_size, steps):
    return lambda: common.epoch_step_time(model, x, y, batch_size, steps)


def report(title, results, jit_modes):
    print(f"\n{title}: step time, median (min-max) over rounds")
    for (kind, jit), values in results.items():
        print(f"  {kind:<6} jit_compile={str(jit):<5} {common.format_timings(values)}")
    ratios = {}
    for jit in jit_modes:
        ratios[jit] = common.timing_ratios(results[("SAM", jit)], results[("plain", jit)])
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    parser.add_argument("--workload", choices=("all", "mlp", "pendulum"), default="all")
    parser.add_argument("--no-jit-only", action="store_true", help="skip jit_compile=True")
    args = parser.parse_args(argv)

    rounds = args.rounds or (3 if args.quick else 15)
    mlp_steps, pendulum_steps = (6, 4) if args.quick else (20, 8)
    jit_modes = (False,) if args.no_jit_only else (False, True)
    print(common.machine_line())
    print(f"{'quick' if args.quick else 'full'} mode: {rounds} measured rounds after 1 warm-up "
          f"round; MLP {mlp_steps} steps/epoch (batch {common.MLP_BATCH}), pendulum "
          f"{pendulum_steps} steps/epoch (batch 50, 100 time points, RK4)")

    all_ratios = {}
    if args.workload in ("all", "mlp"):
        results = common.interleaved(mlp_variants(mlp_steps, jit_modes), rounds)
        all_ratios["MLP 2x1024, batch 1024"] = report("MLP 2x1024, batch 1024", results, jit_modes)
    if args.workload in ("all", "pendulum"):
        results = common.interleaved(pendulum_variants(pendulum_steps, jit_modes), rounds)
        all_ratios["pendulum ODE hybrid"] = report("pendulum ODE hybrid", results, jit_modes)

    print(f"\nRatios SAM / plain step time (median of per-round ratios, min-max); goal <= {GOAL}x")
    for workload, ratios in all_ratios.items():
        for jit, spread in ratios.items():
            verdict = common.verdict(spread, lambda r: r <= GOAL)
            print(f"  {workload:<24} jit_compile={str(jit):<5} wall {common.format_ratio(spread['wall'])}"
                  f"  CPU {common.format_ratio(spread['cpu'])}  {verdict}")


if __name__ == "__main__":
    main()
