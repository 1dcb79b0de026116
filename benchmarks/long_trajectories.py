"""Long trajectories: memory and step time of checkpointed solves, and
multiple against single shooting.

Part 1, memory and time. The damped-pendulum hybrid
(`keras_hybrid.systems.pendulum.build_model`: RK4, one step per time
point, 2x64 tanh correction), SAM (`rho=0.3, perturb="neural"`), batch 8,
graph mode (no XLA), at 1k, 5k and 10k RK4 steps, plain
(`checkpoint=None`) and checkpointed (`checkpoint=100`: segments of 100
steps). Each configuration runs in its own subprocess, which builds the
model and then reports

* peak RSS above the baseline: `ru_maxrss` at the end minus the resident
  set size after import and model build, over the training steps, the
  first one (tracing) included. TensorFlow's CPU allocator statistics
  (`tf.config.experimental.get_memory_info("CPU:0")`) count eager tensors
  but read 0 for these graph-mode steps (TF 2.21, measured), so RSS is the
  figure;
* step time: the median wall and CPU time of the timed steps after one
  warm-up step.

Part 2, estimation. The damped pendulum (`w0 = 1 rad/s`, `gamma =
0.2 1/s`; the hybrid knows `-w0^2 sin(theta)`, a 2x32 tanh network learns
the rest) observed over a long horizon: 16 trajectories of 201 points at
dt = 0.1 s (20 s, about 3 periods), noise 0.01, initial guess `w0 = 0.5`.
Single shooting integrates each trajectory from its first observation;
multiple shooting (`kh.MultipleShooting`, `initial_states="data"`)
integrates segments of 10 intervals from the observed states at segment
starts. Each is trained with plain training (ERM) and with SAM (`rho=0.3`,
neural weights), Adam 1e-2, full batch, XLA, 150 steps (`--quick`) or 600;
the table gives the recovered `w0` (and its value every 150 steps), its
relative error and the whole-horizon prediction error (integrated from the
first state).

Part 3 (`--part radius`, not in the default run): the SAM radius of
multiple shooting chosen without the true constants, by `kh.radius_path`
at rho = 0, 0.03, 0.1, 0.3, 1 scored on 16 held-out trajectories.

Part 5 (`--part segments`, not in the default run): the checkpointed
step at 5,000 RK4 steps, batch 8 and 64, with 10 (TensorFlow's loop
default), 1 and 2 (the library's `kh.ode.SEGMENTS_IN_FLIGHT`) segments
re-integrated at a time by the backward pass.

Part 4 (`--part offsets`, not in the default run): trainable segment
states (`initial_states="trainable"`, continuity weight 0.1 doubling every
100 steps) under SAM, the offsets excluded from the perturbation (the
default) or perturbed.

Run:

```
python benchmarks/long_trajectories.py --quick   # smoke run, a few minutes
python benchmarks/long_trajectories.py           # full run (parts 1 and 2)
python benchmarks/long_trajectories.py --part shooting --seed 1   # part 2, other seeds
python benchmarks/long_trajectories.py --part radius    # about 10 minutes
python benchmarks/long_trajectories.py --part offsets   # about 4 minutes
python benchmarks/long_trajectories.py --part segments --quick  # about 5 minutes
```
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LENGTHS = (1000, 5000, 10000)
CHECKPOINT = 100
BATCH = 8
MEMORY_GOAL = 2.0
TIME_GOAL = 1.5


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(length, checkpoint, steps, batch=BATCH, in_flight=0):
    """One configuration; prints a JSON line with its figures.
    `in_flight`: `kh.ode.SEGMENTS_IN_FLIGHT` (0: the library's)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import resource

    import keras
    import numpy as np

    import keras_hybrid as kh
    from keras_hybrid import ode
    from keras_hybrid.systems import pendulum

    if in_flight:
        ode.SEGMENTS_IN_FLIGHT = in_flight

    times, y0, observed = pendulum.simulate(n_trajectories=batch, n_steps=length + 1)
    sam = kh.SAM(rho=0.3, perturb="neural")
    model = pendulum.build_model(times, sam=sam)
    if checkpoint:
        config = dict(model.get_layer("pendulum").get_config(), checkpoint=checkpoint)
        inputs = keras.Input((2,))
        model = kh.HybridModel(inputs, kh.ODELayer.from_config(config)(inputs), sam=sam)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    baseline = _rss_mib()
    walls, cpus = [], []
    for _ in range(steps + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        model.train_on_batch(y0, observed)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    print(json.dumps({"rss_mib": rss,
                      "wall": float(np.median(walls[1:])), "cpu": float(np.median(cpus[1:]))}))


def _run_worker(length, checkpoint, steps, batch=BATCH, in_flight=0):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(length), str(checkpoint), str(steps), str(batch),
         str(in_flight)],
        capture_output=True, text=True, env=env, check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"worker {length} {checkpoint} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def memory_and_time(lengths, steps, batch=BATCH):
    print(f"\nPart 1: pendulum hybrid under SAM, batch {batch}, graph mode; checkpointed = "
          f"checkpoint={CHECKPOINT}; {steps} timed steps after 1 warm-up step, one "
          f"subprocess per configuration")
    print(f"{'RK4 steps':>9} {'mode':>13} {'RSS peak MiB':>13} "
          f"{'step wall s':>12} {'step CPU s':>11}")
    results = {}
    for length in lengths:
        for checkpoint in (0, CHECKPOINT):
            r = _run_worker(length, checkpoint, steps, batch)
            results[(length, checkpoint)] = r
            mode = "checkpointed" if checkpoint else "plain"
            print(f"{length:>9} {mode:>13} {r['rss_mib']:>13.1f} "
                  f"{r['wall']:>12.3f} {r['cpu']:>11.3f}", flush=True)
    lo, hi = min(lengths), max(lengths)
    ratio = results[(hi, CHECKPOINT)]["rss_mib"] / results[(lo, CHECKPOINT)]["rss_mib"]
    plain = results[(hi, 0)]["rss_mib"] / results[(lo, 0)]["rss_mib"]
    print(f"checkpointed peak RSS {hi} / {lo} steps: {ratio:.2f}x (plain: {plain:.2f}x); "
          f"goal <= {MEMORY_GOAL}x: {'met' if ratio <= MEMORY_GOAL else 'MISSED'}")
    for length in lengths:
        for key in ("wall", "cpu"):
            ratio = results[(length, CHECKPOINT)][key] / results[(length, 0)][key]
            print(f"step time checkpointed / plain at {length} steps ({key}): {ratio:.2f}x; "
                  f"goal <= {TIME_GOAL}x: {'met' if ratio <= TIME_GOAL else 'MISSED'}")
    return results


SEGMENTS_LENGTH = 5000
IN_FLIGHT = (10, 1, 2)  # TensorFlow's default, one at a time, the library's


def segments_in_flight(quick):
    """Part 5: peak memory and step time of the checkpointed step
    (5,000 RK4 steps, `checkpoint=100`) with 10, 1 and 2 segments
    re-integrated at a time, at batch 8 and 64, side by side."""
    steps = 2 if quick else 4
    print(f"\nPart 5: checkpointed pendulum hybrid under SAM, {SEGMENTS_LENGTH} RK4 steps, "
          f"checkpoint={CHECKPOINT}; kh.ode.SEGMENTS_IN_FLIGHT = 10 (TensorFlow's default), 1, 2; "
          f"{steps} timed steps after 1 warm-up step")
    print(f"{'batch':>5} {'in flight':>9} {'RSS peak MiB':>13} {'step wall s':>12} {'step CPU s':>11}")
    for batch in (8, 64):
        for in_flight in IN_FLIGHT:
            r = _run_worker(SEGMENTS_LENGTH, CHECKPOINT, steps, batch, in_flight)
            print(f"{batch:>5} {in_flight:>9} {r['rss_mib']:>13.1f} {r['wall']:>12.3f} {r['cpu']:>11.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (a few minutes)")
    parser.add_argument("--part", choices=("all", "memory", "shooting", "radius", "offsets", "segments"),
                        default="all",
                        help="not in 'all': 'radius', the SAM radius of multiple shooting "
                             "chosen by kh.radius_path on held-out trajectories; 'offsets', "
                             "trainable segment states left out of SAM's perturbation or not; "
                             "'segments', checkpointed segments re-integrated at a time")
    parser.add_argument("--seed", type=int, default=0,
                        help="part 2: network seed; the data's simulator seed is 1 + SEED")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help=f"part 1: trajectories per step (default {BATCH})")
    parser.add_argument("--lengths", default=None,
                        help="part 1: comma-separated RK4 step counts (default 1000,5000,10000)")
    parser.add_argument("--worker", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    sys.path.insert(0, HERE)
    import _common as common

    print(common.machine_line())
    print(f"{'quick' if args.quick else 'full'} mode")
    if args.part in ("all", "memory"):
        lengths = tuple(int(v) for v in args.lengths.split(",")) if args.lengths else LENGTHS
        memory_and_time(lengths, steps=2 if args.quick else 5, batch=args.batch)
    if args.part in ("all", "shooting"):
        shooting(args.quick, args.seed)
    if args.part == "radius":
        radius(args.quick)
    if args.part == "offsets":
        offsets(args.quick)
    if args.part == "segments":
        segments_in_flight(args.quick)


SHOOTING_TIMES = 201
SHOOTING_DT = 0.1
SEGMENT = 10
SHOOTING_TRAJECTORIES = 16
REPORT_EVERY = 150


def _fit_shooting(kind, sam, times, observed, steps, seed):
    import keras

    import keras_hybrid as kh
    from keras_hybrid.systems import pendulum

    model = pendulum.build_model(times, sam=sam, hidden=32, seed=seed)
    if kind == "multiple":
        model = kh.MultipleShooting(model.get_layer("pendulum"), segment_length=SEGMENT, sam=sam)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
    x = observed if kind == "multiple" else observed[:, 0]
    start = time.perf_counter()
    path = []  # w0 after every `REPORT_EVERY` steps
    for done in range(REPORT_EVERY, steps + 1, REPORT_EVERY):
        model.fit(x, observed, batch_size=len(observed), initial_epoch=done - REPORT_EVERY,
                  epochs=done, verbose=0)
        path.append(model.physical_constants()["w0"])
    w0 = path[-1]
    # Whole-horizon prediction error from the first state (both models).
    predicted = model.predict(x, verbose=0)
    mse = float(((predicted - observed) ** 2).mean())
    return w0, mse, time.perf_counter() - start, path


def shooting(quick, seed=0):
    import keras_hybrid as kh
    from keras_hybrid.systems import pendulum

    steps = 150 if quick else 600
    times, _, observed = pendulum.simulate(
        n_trajectories=SHOOTING_TRAJECTORIES, n_steps=SHOOTING_TIMES, dt=SHOOTING_DT,
        seed=1 + seed,
    )
    true_w0 = pendulum.TRUE_CONSTANTS["w0"]
    print(f"\nPart 2 (network seed {seed}, data seed {1 + seed}): damped pendulum hybrid "
          f"(2x32 tanh correction), true w0 = {true_w0} rad/s, "
          f"initial guess 0.5; {SHOOTING_TRAJECTORIES} trajectories of {SHOOTING_TIMES} points, "
          f"dt = {SHOOTING_DT} s ({(SHOOTING_TIMES - 1) * SHOOTING_DT:.0f} s, about "
          f"{(SHOOTING_TIMES - 1) * SHOOTING_DT * true_w0 / (2 * 3.14159):.1f} periods), noise 0.01; "
          f"multiple shooting: segments of {SEGMENT} intervals from the observed states; "
          f"Adam 1e-2, full batch, {steps} steps, XLA")
    print(f"{'shooting':>9} {'training':>22} {'w0 [rad/s]':>11} {'rel. error':>11} "
          f"{'horizon MSE':>12} {'time s':>7}")
    errors = {}
    for kind in ("single", "multiple"):
        for label, sam in (("ERM", None), ("SAM (neural, rho=0.3)", kh.SAM(rho=0.3))):
            w0, mse, seconds, path = _fit_shooting(kind, sam, times, observed, steps, seed=seed)
            errors[(kind, label)] = abs(w0 - true_w0) / true_w0
            print(f"{kind:>9} {label:>22} {w0:>11.4f} {100 * errors[(kind, label)]:>10.2f}% "
                  f"{mse:>12.2e} {seconds:>7.1f}   w0 every {REPORT_EVERY} steps: "
                  + " ".join(f"{w:.4f}" for w in path), flush=True)
    best = min(errors[("multiple", label)] for label in ("ERM", "SAM (neural, rho=0.3)"))
    for label in ("ERM", "SAM (neural, rho=0.3)"):
        single, multiple = errors[("single", label)], errors[("multiple", label)]
        print(f"{label}: single / multiple shooting error = {single / max(multiple, 1e-12):.1f}x")
    print(f"goal (multiple shooting <= 5 %, single >= 5x larger): best multiple-shooting error "
          f"{100 * best:.2f}%")


RADII = (0.0, 0.03, 0.1, 0.3, 1.0)


def radius(quick):
    """The radius of multiple shooting chosen without the true constants:
    `kh.radius_path` on 16 held-out trajectories, scored by the
    whole-horizon prediction loss (`evaluate` integrates from the first
    state)."""
    import keras

    import keras_hybrid as kh
    from keras_hybrid.systems import pendulum

    steps = 150 if quick else 600
    simulate = dict(n_trajectories=SHOOTING_TRAJECTORIES, n_steps=SHOOTING_TIMES, dt=SHOOTING_DT)
    times, _, observed = pendulum.simulate(**simulate, seed=1)
    _, _, held_out = pendulum.simulate(**simulate, seed=2)

    def build(sam):
        model = pendulum.build_model(times, sam=sam, hidden=32, seed=0)
        model = kh.MultipleShooting(model.get_layer("pendulum"), segment_length=SEGMENT, sam=sam)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
        return model

    print(f"\nPart 3: radius of multiple shooting (segments of {SEGMENT} intervals) by "
          f"kh.radius_path, radii {RADII}, seed 0, {steps} full-batch steps; validation: "
          f"{SHOOTING_TRAJECTORIES} held-out trajectories (simulator seed 2), whole-horizon MSE")
    start = time.perf_counter()
    path = kh.radius_path(build, observed, observed, rhos=RADII,
                          validation_data=(held_out, held_out), epochs=steps,
                          batch_size=SHOOTING_TRAJECTORIES)
    print(path)
    print(f"{time.perf_counter() - start:.0f} s")


def offsets(quick):
    """Trainable segment states (`initial_states="trainable"`, continuity
    weight 0.1 doubling every 100 steps) under SAM (rho=0.3, neural), with
    the offsets excluded from the perturbation (the default) and included
    (`model.sam` replaced by a `SAM` without the exclusion)."""
    import keras
    import numpy as np

    import keras_hybrid as kh
    from keras_hybrid.systems import pendulum

    steps = 150 if quick else 600
    times, _, observed = pendulum.simulate(
        n_trajectories=SHOOTING_TRAJECTORIES, n_steps=SHOOTING_TIMES, dt=SHOOTING_DT, seed=1
    )
    true_w0 = pendulum.TRUE_CONSTANTS["w0"]
    x = {"trajectories": observed, "index": np.arange(SHOOTING_TRAJECTORIES)}
    print(f"\nPart 4: trainable segment states, continuity weight 0.1 doubling every 100 steps, "
          f"SAM (neural, rho=0.3), seed 0, {steps} full-batch steps, XLA")
    print(f"{'offsets under SAM':>18} {'w0 [rad/s]':>11} {'rel. error':>11} {'horizon MSE':>12} "
          f"{'RMS offset':>11} {'time s':>7}")
    for label in ("excluded", "perturbed"):
        keras.utils.set_random_seed(0)
        base = pendulum.build_model(times, hidden=32, seed=0)
        model = kh.MultipleShooting(
            base.get_layer("pendulum"), segment_length=SEGMENT, initial_states="trainable",
            n_trajectories=SHOOTING_TRAJECTORIES, sam=kh.SAM(rho=0.3),
            continuity_weight=keras.optimizers.schedules.ExponentialDecay(0.1, 100, 2.0),
        )
        if label == "perturbed":
            model.sam = kh.SAM(rho=0.3)  # without "segment_states" in `exclude`
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
        start = time.perf_counter()
        model.fit(x, observed, batch_size=SHOOTING_TRAJECTORIES, epochs=steps, verbose=0)
        w0 = model.physical_constants()["w0"]
        mse = float(((model.predict(x, verbose=0) - observed) ** 2).mean())
        rms = float(np.sqrt(np.mean(keras.ops.convert_to_numpy(model.offsets.offsets) ** 2)))
        print(f"{label:>18} {w0:>11.4f} {100 * abs(w0 - true_w0) / true_w0:>10.2f}% "
              f"{mse:>12.2e} {rms:>11.2e} {time.perf_counter() - start:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
