"""ODE hybrid training: step time and compile time, with and without XLA.

The damped-pendulum hybrid (`keras_hybrid.systems.pendulum.build_model`):
100 time points, one RK4 step per interval (99 steps in a `tf.scan`), a
2x64 tanh correction network, batch 50, Adam 3e-3. Plain (ERM) and SAM
(`rho=0.3, perturb="neural"`) steps are measured with `jit_compile=False`
and `jit_compile=True`, side by side.

* compile time: wall time of the first training step of a fresh model
  (tracing, graph optimization and, with `jit_compile=True`, XLA
  compilation, plus one step); goal < 30 s;
* step time: median over epochs after warm-up; goal: the jitted step at
  least 1.5x faster than the non-jitted one;
* with `--steps-per-execution 1,10,100`: for each `k`, a fresh jitted model
  compiled with `steps_per_execution=k`; the first call of `fit` runs `k`
  steps, so its wall time is split into `k` times the steady step time
  (the mean over the next `k` steps) and the rest, the compile overhead.

Run:

```
python benchmarks/ode_training.py --quick   # smoke run, < 2 minutes
python benchmarks/ode_training.py           # full run
python benchmarks/ode_training.py --quick --steps-per-execution 1,10,100
```
"""

import argparse

import _common as common
import keras

import keras_hybrid as kh

SPEEDUP_GOAL = 1.5
COMPILE_GOAL = 30.0
BATCH = 50


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    parser.add_argument("--time-points", type=int, default=100)
    parser.add_argument("--steps-per-execution", default=None,
                        help="comma-separated values, e.g. 1,10,100: measure only the first "
                             "call of jitted models against steps_per_execution")
    args = parser.parse_args(argv)
    if args.steps_per_execution:
        values = [int(v) for v in args.steps_per_execution.split(",")]
        return steps_per_execution_table(values, args.time_points)

    rounds = args.rounds or (3 if args.quick else 15)
    steps = 4 if args.quick else 8
    print(common.machine_line())
    print(f"{'quick' if args.quick else 'full'} mode: pendulum hybrid, {args.time_points} time "
          f"points (RK4), batch {BATCH}, {steps} steps/epoch, {rounds} measured rounds after "
          f"1 warm-up round")
    times, y0, observed = common.pendulum_setup(
        n_steps=args.time_points, n_trajectories=steps * BATCH
    )

    compile_times, variants = {}, {}
    for kind, sam in (("plain", None), ("SAM", kh.SAM(rho=0.3, perturb="neural"))):
        for jit in (False, True):
            model = common.pendulum_model(times, sam=sam)
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=jit)
            timer = common.EpochTimer()
            model.fit(y0[:BATCH], observed[:BATCH], batch_size=BATCH, epochs=1, verbose=0,
                      callbacks=[timer])
            compile_times[(kind, jit)] = timer.first_batch
            variants[(kind, jit)] = (
                lambda m=model: common.epoch_step_time(m, y0, observed, BATCH, steps)
            )
    results = common.interleaved(variants, rounds)

    print("\nfirst step of a fresh model (trace + compile + one step)")
    for (kind, jit), seconds in compile_times.items():
        print(f"  {kind:<6} jit_compile={str(jit):<5} {seconds:7.2f} s")
    print("\nstep time, median (min-max) over rounds")
    for (kind, jit), values in results.items():
        print(f"  {kind:<6} jit_compile={str(jit):<5} {common.format_timings(values)}")

    print(f"\nRatios non-jitted / jitted step time (median of per-round ratios, min-max); "
          f"goal >= {SPEEDUP_GOAL}x; compile time goal < {COMPILE_GOAL:.0f} s")
    for kind in ("plain", "SAM"):
        spread = common.timing_ratios(results[(kind, False)], results[(kind, True)])
        compiled = compile_times[(kind, True)]
        speed = common.verdict(spread, lambda r: r >= SPEEDUP_GOAL)
        compile_ok = "goal met" if compiled < COMPILE_GOAL else "goal MISSED"
        print(f"  {kind:<6} speed-up wall {common.format_ratio(spread['wall'])}, CPU "
              f"{common.format_ratio(spread['cpu'])}: {speed}; jitted first step "
              f"{compiled:.1f} s: {compile_ok}")


def steps_per_execution_table(values, time_points):
    """First `fit` call of jitted models against `steps_per_execution`."""
    print(common.machine_line())
    print(f"pendulum hybrid, {time_points} time points (RK4), batch {BATCH}, jit_compile=True; "
          "first call of fit = compile overhead + k steps")
    times, y0, observed = common.pendulum_setup(
        n_steps=time_points, n_trajectories=2 * max(values) * BATCH
    )
    print(f"\n  {'step':<6} {'k':>5} {'first call':>11} {'steady step':>12} "
          f"{'k x steady':>11} {'overhead':>9}")
    for kind, sam in (("plain", None), ("SAM", kh.SAM(rho=0.3, perturb="neural"))):
        for k in values:
            model = common.pendulum_model(times, sam=sam)
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", jit_compile=True,
                          steps_per_execution=k)
            timer = common.EpochTimer()
            model.fit(y0[: k * BATCH], observed[: k * BATCH], batch_size=BATCH, epochs=1,
                      verbose=0, callbacks=[timer])
            first = timer.first_batch
            steady = common.epoch_step_time(model, y0[k * BATCH:], observed[k * BATCH:], BATCH, k)
            print(f"  {kind:<6} {k:>5} {first:>9.2f} s {steady.wall * 1e3:>9.1f} ms "
                  f"{k * steady.wall:>9.2f} s {first - k * steady.wall:>7.2f} s", flush=True)


if __name__ == "__main__":
    main()
