"""keras_hybrid's SAM versus the SAM of tf-keras (Keras 2).

Same MLP (128 -> 1024 -> 1024 -> 10, ReLU, identical initial weights), same
data (batch 1024, MSE), same optimizer (Adam, learning rate 1e-3), same
radius (`rho=0.05`, one global norm):

* `keras_hybrid`: `kh.SAMModel(keras.Sequential(...), sam=kh.SAM(rho=0.05, perturb="all"))`
  (Keras 3);
* `tf_keras`: `tf_keras.models.experimental.SharpnessAwareMinimization(
  tf_keras.Sequential(...), rho=0.05)` (Keras 2).

The plain (non-SAM) step of each framework is measured too, so that the
SAM overhead of each is visible apart from framework differences. Every
measurement runs in its own subprocess (one framework imported per
process), which gives its peak resident memory (`ru_maxrss`); the
subprocesses of the variants alternate, round after round (at least 5
rounds), and ratios are taken within a round. Wall time is the headline
(what a user waits for), CPU time next to it, and wall / CPU per variant
shows idle time. Goals, in wall time: our SAM step <= 1.0x tf-keras's, our
plain step <= 1.05x tf-keras's plain step.

Run:

```
python benchmarks/vs_tf_keras.py --quick   # 5 rounds, jit_compile=False, about 5 minutes
python benchmarks/vs_tf_keras.py           # full run (also jit_compile=True)
python benchmarks/vs_tf_keras.py --quick --steps 30 --steps-per-execution 10   # the fit loop's share
python benchmarks/vs_tf_keras.py --quick --repeated-dataset   # no data iterator built per epoch
```

The step times are epoch times over steps, so they include each
framework's own per-epoch and per-call work of `fit`; more steps per
epoch (`--steps`) and per call (`--steps-per-execution`) shrink those
shares.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

FEATURES, WIDTH, OUTPUTS, BATCH = 128, 1024, 10, 1024
# Steps per call of the compiled train function (`compile(steps_per_execution=...)`),
# set by `--steps-per-execution`.
STEPS_PER_EXECUTION = 1
# `--repeated-dataset`: feed one repeated `tf.data.Dataset` with
# `steps_per_epoch` instead of NumPy arrays, so that neither framework
# builds a new data iterator per epoch (Keras 3 does for arrays).
REPEATED_DATASET = False
GOAL = 1.0
PLAIN_GOAL = 1.05
VARIANTS = ("keras_hybrid SAM", "tf_keras SAM", "keras_hybrid plain", "tf_keras plain")


def initial_weights(seed=0):
    """Glorot-uniform kernels and zero biases, drawn with NumPy so that both
    frameworks start from the very same weights."""
    rng = np.random.default_rng(seed)
    sizes = [FEATURES, WIDTH, WIDTH, OUTPUTS]
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype("float32"))
        weights.append(np.zeros(fan_out, "float32"))
    return weights


def data(n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES)).astype("float32")
    y = rng.standard_normal((n, OUTPUTS)).astype("float32")
    return x, y


def current_rss_mib():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(variant, jit):
    """The compiled model of a variant; imports only its own framework."""
    framework, kind = variant.split()
    if framework == "tf_keras":
        import tf_keras as k

        net = k.Sequential(
            [
                k.Input((FEATURES,)),
                k.layers.Dense(WIDTH, "relu"),
                k.layers.Dense(WIDTH, "relu"),
                k.layers.Dense(OUTPUTS),
            ]
        )
        net.set_weights(initial_weights())
        model = net
        if kind == "SAM":
            model = k.models.experimental.SharpnessAwareMinimization(net, rho=0.05)
        model.compile(optimizer=k.optimizers.Adam(1e-3), loss="mse", jit_compile=jit,
                      steps_per_execution=STEPS_PER_EXECUTION)
        return model, k
    import keras

    import keras_hybrid as kh

    net = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(WIDTH, "relu"),
            keras.layers.Dense(WIDTH, "relu"),
            keras.layers.Dense(OUTPUTS),
        ]
    )
    net.set_weights(initial_weights())
    model = net
    if kind == "SAM":
        model = kh.SAMModel(net, sam=kh.SAM(rho=0.05, perturb="all"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=jit,
                  steps_per_execution=STEPS_PER_EXECUTION)
    return model, keras


def op_profile(model, x, y, steps):
    """What one profiled epoch spends, per step, from the `tf.profiler` trace.

    Reads the trace (`*.xplane.pb`) directly. Returns `(ops, schedule)`:
    `ops`, the CPU time of every kernel executed on the compute threads,
    ms per step, summed per op type; `schedule`, ms per step of the
    epoch's span (first kernel to last) split by how many kernels ran at
    once: `idle` (none: host work between and within steps), `one`, and
    `two_or_more`. Idle time and time on one kernel are what wall time
    has on top of the CPU time spread over the cores.
    """
    import collections
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    totals = collections.Counter()
    edges = []
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_XLA")):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # Kernels are named "<node name>:<op type>"; executor
                # events ("ExecutorState::Process") enclose them.
                if ":" in name and not name.startswith("ExecutorState"):
                    totals[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9 / steps
                    start = line.timestamp_ns * 1000 + event.offset_ps
                    edges += [(start, 1), (start + event.duration_ps, -1)]
    edges.sort()
    running, previous = 0, edges[0][0] if edges else 0
    by_count = collections.Counter()
    for time_ps, change in edges:
        by_count[min(running, 2)] += time_ps - previous
        running, previous = running + change, time_ps
    ms = lambda ps: ps / 1e9 / steps  # noqa: E731
    schedule = {
        "span": ms(sum(by_count.values())),
        "idle": ms(by_count[0]),
        "one": ms(by_count[1]),
        "two_or_more": ms(by_count[2]),
    }
    return dict(totals.most_common(25)), schedule


def child(variant, jit, steps, epochs, warmup, profile=False):
    """Runs in the subprocess: trains, prints one JSON line of results."""
    import resource

    import tensorflow as tf

    model, framework = build(variant, jit)
    x, y = data(steps * BATCH)
    rss_before_fit = current_rss_mib()

    class Timer(framework.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.durations = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None):
            wall, cpu = self.start
            self.durations.append((time.perf_counter() - wall, time.process_time() - cpu))

    timer = Timer()
    if REPEATED_DATASET:
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
        model.fit(dataset, steps_per_epoch=steps, epochs=warmup + epochs, verbose=0, callbacks=[timer])
    else:
        model.fit(
            x, y, batch_size=BATCH, epochs=warmup + epochs, shuffle=False, verbose=0, callbacks=[timer]
        )
    step_times = [d[0] / steps for d in timer.durations[warmup:]]
    cpu_times = [d[1] / steps for d in timer.durations[warmup:]]
    result = {
        "variant": variant,
        "jit": jit,
        "step_times": step_times,
        "cpu_times": cpu_times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_before_fit_mib": rss_before_fit,
        # Keras 2's SAM logs the mean of the unperturbed and perturbed
        # losses; `evaluate` gives both variants' loss on the same footing.
        "final_loss": float(model.evaluate(x, y, batch_size=BATCH, verbose=0)),
        "versions": f"TF {tf.__version__}, {framework.__name__} {framework.__version__}",
    }
    if profile:
        result["op_profile"], result["schedule"] = op_profile(model, x, y, steps)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(variant, jit, steps, epochs, warmup, profile=False):
    command = [
        sys.executable, os.path.abspath(__file__), "--child", variant,
        "--steps", str(steps), "--epochs", str(epochs), "--warmup", str(warmup),
        "--steps-per-execution", str(STEPS_PER_EXECUTION),
    ] + (["--repeated-dataset"] if REPEATED_DATASET else []) + (["--jit"] if jit else []) \
        + (["--profile"] if profile else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{variant} (jit_compile={jit}) failed:\n{out.stderr[-3000:]}")


def profile(steps, warmup):
    """Prints, for the four variants, how each step's span is scheduled
    (idle, one kernel, two or more at once) and the CPU time per op type of
    the two SAM steps, side by side."""
    print(f"One profiled epoch of {steps} steps per variant, jit_compile=False; ms per step")
    runs = {variant: run_child(variant, False, steps, 1, warmup, profile=True) for variant in VARIANTS}
    print(f"  {'variant':<19} {'span':>7} {'idle':>7} {'1 kernel':>9} {'2+ kernels':>11} "
          f"{'kernel CPU':>11}")
    for variant, run in runs.items():
        sched, cpu = run["schedule"], sum(run["op_profile"].values())
        print(f"  {variant:<19} {sched['span']:7.1f} {sched['idle']:7.1f} {sched['one']:9.1f} "
              f"{sched['two_or_more']:11.1f} {cpu:11.1f}")
    a, b = runs["keras_hybrid SAM"]["op_profile"], runs["tf_keras SAM"]["op_profile"]
    print("\nCPU time per op type, SAM steps")
    print(f"  {'op type':<26} {'keras_hybrid':>12} {'tf_keras':>9}")
    for op in sorted(set(a) | set(b), key=lambda op: -(a.get(op, 0) + b.get(op, 0)))[:16]:
        print(f"  {op:<26} {a.get(op, 0.0):12.2f} {b.get(op, 0.0):9.2f}")
    print(f"  {'total (top 25 op types)':<26} {sum(a.values()):12.2f} {sum(b.values()):9.2f}")
    one, five, fifteen = os.getloadavg()
    print(f"load average at the end {one:.2f}, {five:.2f}, {fifteen:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds, no XLA")
    parser.add_argument("--rounds", type=int, default=None, help="subprocess rounds per variant")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=None, help="measured epochs per subprocess")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured epochs per subprocess")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="training steps per call of the compiled train function, for every variant")
    parser.add_argument("--repeated-dataset", action="store_true",
                        help="feed one repeated tf.data.Dataset with steps_per_epoch instead of arrays")
    parser.add_argument("--no-xla", action="store_true", help="only jit_compile=False")
    parser.add_argument("--profile", action="store_true",
                        help="only profile: each step's schedule (idle, one kernel, two or more) for the four "
                             "variants, and CPU time per op type of the SAM steps (tf.profiler)")
    args = parser.parse_args(argv)
    global STEPS_PER_EXECUTION, REPEATED_DATASET
    STEPS_PER_EXECUTION = args.steps_per_execution
    REPEATED_DATASET = args.repeated_dataset

    steps = args.steps or (6 if args.quick else 16)
    epochs = args.epochs or (3 if args.quick else 6)
    if args.child:
        child(args.child, args.jit, steps, epochs, args.warmup, args.profile)
        return
    if args.profile:
        profile(steps, args.warmup)
        return

    rounds = args.rounds or 5
    jit_modes = (False,) if args.quick or args.no_xla else (False, True)
    one, five, fifteen = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPU cores; load average {one:.2f}, {five:.2f}, {fifteen:.2f}")
    print(f"{'quick' if args.quick else 'full'} mode: {rounds} round(s) of one subprocess per "
          f"variant (alternating); each: {args.warmup} warm-up + {epochs} measured epochs of "
          f"{steps} steps, batch {BATCH}, {STEPS_PER_EXECUTION} step(s) per execution"
          + (", one repeated tf.data.Dataset" if REPEATED_DATASET else ", NumPy arrays"))
    results = {(v, jit): [] for jit in jit_modes for v in VARIANTS}
    keys = list(results)
    for r in range(rounds):
        shift = r % len(keys)
        for variant, jit in keys[shift:] + keys[:shift]:
            results[(variant, jit)].append(run_child(variant, jit, steps, epochs, args.warmup))
    versions = sorted({run["versions"] for runs in results.values() for run in runs})
    print("versions: " + "; ".join(versions))

    print("\nstep time, wall and CPU (process, all threads): median (min-max) over all measured "
          "epochs;\nwall/CPU: median over rounds; peak RSS: max over subprocesses; RSS before fit: "
          "median")
    per_round, peaks = {}, {}
    for (variant, jit), runs in results.items():
        peak = max(run["peak_rss_mib"] for run in runs)
        before = statistics.median(run["rss_before_fit_mib"] for run in runs)
        loss = runs[0]["final_loss"]
        line = f"  {variant:<19} jit_compile={str(jit):<5}"
        for field, label in (("step_times", "wall"), ("cpu_times", "CPU")):
            times = [t for run in runs for t in run[field]]
            per_round[(variant, jit, label)] = [statistics.median(run[field]) for run in runs]
            line += (f" {label} {1e3 * statistics.median(times):6.2f} ms "
                     f"({1e3 * min(times):.2f}-{1e3 * max(times):.2f})")
        idle = statistics.median(
            w / c for w, c in zip(per_round[(variant, jit, "wall")], per_round[(variant, jit, "CPU")]))
        peaks[(variant, jit)] = peak
        print(line + f"  wall/CPU {idle:.2f}  peak RSS {peak:5.0f} MiB (before fit {before:.0f})  "
              f"loss after training {loss:.4f}")

    def ratio(a, b, jit, label):
        """Median (min, max) of the per-round ratios a / b."""
        values = [u / v for u, v in zip(per_round[(a, jit, label)], per_round[(b, jit, label)])]
        return statistics.median(values), min(values), max(values)

    def show(spread):
        return f"{spread[0]:.2f}x ({spread[1]:.2f}-{spread[2]:.2f})"

    print(f"\nRatios, median of the {rounds} per-round ratios (min-max); goals (wall): SAM "
          f"<= {GOAL}x tf-keras's SAM, plain <= {PLAIN_GOAL}x tf-keras's plain")
    for jit in jit_modes:
        rows = (
            ("SAM: keras_hybrid / tf_keras", "keras_hybrid SAM", "tf_keras SAM", GOAL),
            ("plain: keras_hybrid / tf_keras", "keras_hybrid plain", "tf_keras plain", PLAIN_GOAL),
            ("keras_hybrid SAM / plain", "keras_hybrid SAM", "keras_hybrid plain", None),
            ("tf_keras SAM / plain", "tf_keras SAM", "tf_keras plain", None),
        )
        for name, a, b, goal in rows:
            wall, cpu = ratio(a, b, jit, "wall"), ratio(a, b, jit, "CPU")
            verdict = "" if goal is None else (
                f"  goal {'met' if wall[0] <= goal else 'MISSED'} in wall time")
            print(f"  jit_compile={str(jit):<5} {name:<31} wall {show(wall)}  CPU {show(cpu)}{verdict}")
        rss = peaks[("keras_hybrid SAM", jit)] / peaks[("tf_keras SAM", jit)]
        print(f"  jit_compile={str(jit):<5} SAM peak RSS keras_hybrid / tf_keras {rss:.2f}x")
    one, five, fifteen = os.getloadavg()
    print(f"load average at the end {one:.2f}, {five:.2f}, {fifteen:.2f}")


if __name__ == "__main__":
    main()
