"""A cheaper SAM schedule: LookSAM, `SAM(every=k)`.

LookSAM (Liu et al., arXiv:2203.02714) computes the SAM gradient (two
forward-backward passes) only every `k` steps and, in between, adds the
stored component of the last SAM gradient orthogonal to the plain gradient
to a single forward-backward pass. Two questions, at `k = 5`:

1. Cost: step time relative to a plain step (goal <= 1.3x), measured side by
   side with plain and full SAM steps on the MLP 2x1024 (batch 1024,
   `rho=0.05`) and on the pendulum ODE hybrid (100 time points, RK4,
   `rho=0.3, perturb="neural"`), with and without `jit_compile`. Epochs
   have a multiple of `k` steps, so every epoch holds the same share of
   full SAM steps.
2. Accuracy: the frequency `w0` recovered on the damped pendulum (true
   1.0 rad/s) by `keras_hybrid.demo.fit_pendulum` (the demo's setup: 50 time
   points, Adam 3e-3, batch 50, `jit_compile=True`) with
   `SAM(rho=0.3, perturb="neural", every=5)` versus full SAM (goal: error
   within 1.5x of full SAM's) and plain training.

Run:

```
python benchmarks/looksam.py --quick   # smoke run, < 2 minutes (50 epochs: w0 not converged)
python benchmarks/looksam.py           # full run (600 epochs, as the demo; seeds 0 1 2)
python benchmarks/looksam.py --skip-cost --runs LookSAM --epochs 900   # LookSAM at the
                                       # compute of 600 full-SAM epochs
```

`--every` and `--alpha` set LookSAM's `k` and `alpha`, `--seeds` and
`--epochs` the accuracy runs, `--runs` which trainings are compared.
"""

import argparse
import time

import _common as common
import keras

import keras_hybrid as kh
from keras_hybrid.demo import fit_pendulum
from keras_hybrid.systems import pendulum

COST_GOAL = 1.3
ERROR_GOAL = 1.5
PENDULUM_SAM = dict(rho=0.3, perturb="neural")


def cost_variants(workload, steps, jit_modes, every, alpha):
    """`(kind, jit) -> runner` for plain, LookSAM and full SAM."""
    if workload == "mlp":
        x, y = common.mlp_data(steps * common.MLP_BATCH)
        batch_size, sam_args, learning_rate = common.MLP_BATCH, dict(rho=0.05), 1e-3
    else:
        batch_size = 50
        times, x, y = common.pendulum_setup(n_steps=100, n_trajectories=steps * batch_size)
        sam_args, learning_rate = PENDULUM_SAM, 3e-3
    settings = {"plain": None, f"LookSAM k={every}": kh.SAM(every=every, alpha=alpha, **sam_args),
                "full SAM": kh.SAM(**sam_args)}
    variants = {}
    for jit in jit_modes:
        for kind, sam in settings.items():
            if workload == "mlp":
                model = common.mlp() if sam is None else kh.SAMModel(common.mlp(), sam=sam)
            else:
                model = common.pendulum_model(times, sam=sam)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", jit_compile=jit)
            variants[(kind, jit)] = (
                lambda m=model: common.epoch_step_time(m, x, y, batch_size, steps)
            )
    return variants


def measure_cost(args):
    rounds = args.rounds or (3 if args.quick else 11)
    steps = 2 * args.every if args.quick else 4 * args.every
    jit_modes = (False, True)
    print(f"\nCost: {rounds} measured rounds after 1 warm-up round, {steps} steps/epoch")
    ratios = {}
    for workload, title in (("mlp", "MLP 2x1024, batch 1024"), ("pendulum", "pendulum ODE hybrid")):
        variants = cost_variants(workload, steps, jit_modes, args.every, args.alpha)
        results = common.interleaved(variants, rounds)
        print(f"{title}: step time, median (min-max) over rounds")
        for (kind, jit), values in results.items():
            print(f"  {kind:<12} jit_compile={str(jit):<5} {common.format_timings(values)}")
        for jit in jit_modes:
            plain = results[("plain", jit)]
            ratios[(title, jit)] = {
                kind: common.timing_ratios(results[(kind, jit)], plain)
                for kind in (f"LookSAM k={args.every}", "full SAM")
            }
    return ratios


def measure_accuracy(args):
    epochs = args.epochs or (50 if args.quick else 600)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    note = " (quick mode: too few epochs for w0 to converge)" if args.quick else ""
    print(f"\nAccuracy: damped pendulum, true w0 = {pendulum.TRUE_CONSTANTS['w0']} rad/s, "
          f"{epochs} epochs, seeds {seeds}{note}")
    print(f"  {'training':<34} {'seed':>4} {'w0':>8} {'abs. error':>10} {'fit time [s]':>12}")
    runs = {
        "ERM (plain)": None,
        "full SAM (rho=0.3, neural)": kh.SAM(**PENDULUM_SAM),
        f"LookSAM (k={args.every}, alpha={args.alpha:g})": kh.SAM(
            every=args.every, alpha=args.alpha, **PENDULUM_SAM
        ),
    }
    runs = {label: sam for label, sam in runs.items() if label.split()[0] in args.runs}
    errors = {label: [] for label in runs}
    true_w0 = pendulum.TRUE_CONSTANTS["w0"]
    for seed in seeds:
        data = pendulum.simulate(seed=seed)
        for label, sam in runs.items():
            model, _, seconds = fit_pendulum(sam, epochs=epochs, seed=seed, data=data)
            w0 = model.physical_constants()["w0"]
            errors[label].append(abs(w0 - true_w0))
            print(f"  {label:<34} {seed:>4} {w0:>8.4f} {abs(w0 - true_w0):>10.4f} {seconds:>12.1f}",
                  flush=True)
    return errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (cost)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (accuracy)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (accuracy)")
    parser.add_argument("--every", type=int, default=5, help="LookSAM's k. Defaults to 5")
    parser.add_argument("--alpha", type=float, default=0.7, help="LookSAM's alpha. Defaults to 0.7")
    parser.add_argument("--runs", nargs="+", choices=("ERM", "full", "LookSAM"),
                        default=["ERM", "full", "LookSAM"], help="trainings compared (accuracy)")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args(argv)
    print(common.machine_line())
    start = time.perf_counter()
    ratios = {} if args.skip_cost else measure_cost(args)
    errors = {} if args.skip_accuracy else measure_accuracy(args)

    if ratios:
        print(f"\nRatios step time / plain step time (median of per-round ratios, min-max); "
              f"goal for LookSAM k=5 <= {COST_GOAL}x")
        for (title, jit), by_kind in ratios.items():
            look = by_kind[f"LookSAM k={args.every}"]
            verdict = common.verdict(look, lambda r: r <= COST_GOAL)
            print(f"  {title:<24} jit_compile={str(jit):<5} {verdict}")
            for kind, spread in by_kind.items():
                print(f"    {kind:<12} wall {common.format_ratio(spread['wall'])}  "
                      f"CPU {common.format_ratio(spread['cpu'])}")
    by_kind = {label.split()[0]: values for label, values in errors.items()}
    if "full" in by_kind and "LookSAM" in by_kind:
        full, look = by_kind["full"], by_kind["LookSAM"]
        mean_full, mean_look = sum(full) / len(full), sum(look) / len(look)
        ratio = mean_look / mean_full
        verdict = "meets goal" if ratio <= ERROR_GOAL else "MISSES goal"
        line = (f"\nRatio of w0 errors (mean abs. error over seeds): LookSAM / full SAM = "
                f"{mean_look:.4f} / {mean_full:.4f} = {ratio:.2f}x (goal <= {ERROR_GOAL}x, {verdict})")
        if "ERM" in by_kind:
            line += f"; ERM / full SAM = {sum(by_kind['ERM']) / len(full) / mean_full:.1f}x"
        print(line)
        per_seed = ", ".join(f"{a / b:.2f}x" for a, b in zip(look, full))
        print(f"  per seed LookSAM / full SAM: {per_seed}")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
