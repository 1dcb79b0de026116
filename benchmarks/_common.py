"""Shared helpers of the benchmark scripts: timing callbacks, interleaved
measurement of several training variants, and the benchmark models.

Timing convention: the step time of a variant is the time of one `fit`
epoch (from `on_epoch_begin` to `on_epoch_end`) divided by its number of
steps, as wall time and as CPU time of the process (all threads). Variants
are measured side by side in rounds; the order of the variants is rotated
from round to round so that no variant always runs first (or last) after
another, and the figures are medians over rounds, after warm-up epochs that
absorb tracing and compilation.

Wall time is what a user waits for, and it is the headline figure; the
ratio wall / CPU of each variant shows idle time (above 1 on one busy
core: waiting; below 1: work on several cores at once). On a machine
shared with other jobs wall time swings with their load, so ratios are
taken within a round (variants measured one after the other) and their
spread over rounds is printed; CPU time counts the work the step itself
does and barely moves with the load of others (the scripts print both).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import namedtuple  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MLP_FEATURES = 128
MLP_WIDTH = 1024
MLP_OUTPUTS = 10
MLP_BATCH = 1024

Timing = namedtuple("Timing", ["wall", "cpu"])
Timing.__doc__ = "Wall time and process CPU time, in seconds."


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch and of the first batch.

    `first_batch` holds the wall time of the first batch of the first epoch
    (tracing and compilation included), in seconds; `epochs` a `Timing` per
    epoch.
    """

    def __init__(self):
        super().__init__()
        self.epochs = []
        self.first_batch = None
        self._epoch_start = None
        self._batch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = Timing(time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu = self._epoch_start
        self.epochs.append(Timing(time.perf_counter() - wall, time.process_time() - cpu))

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_batch is None:
            self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_batch is None:
            # Force the result so that the measured time covers the step.
            if logs:
                for value in logs.values():
                    np.asarray(value)
            self.first_batch = time.perf_counter() - self._batch_start


def epoch_step_time(model, x, y, batch_size, steps):
    """Runs one epoch of `steps` steps; returns the `Timing` per step."""
    timer = EpochTimer()
    model.fit(
        x[: steps * batch_size],
        y[: steps * batch_size],
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    wall, cpu = timer.epochs[0]
    return Timing(wall / steps, cpu / steps)


def interleaved(variants, rounds, warmup=1):
    """Measures several variants side by side.

    Args:
        variants: dict `name -> callable()` returning one measurement (e.g.
            a step time) each time it is called.
        rounds: measured rounds; each round calls every variant once.
        warmup: unmeasured rounds first (tracing, compilation, caches).
            Defaults to `1`.

    Returns:
        Dict `name -> list of measurements`, one per measured round.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    results = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(variants[name]())
    return results


def summary(values):
    """`(median, min, max)` of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def ratio_spread(numerators, denominators):
    """Median and range of the per-round ratios `numerators[i] / denominators[i]`.

    Ratios of measurements taken in the same round cancel slow drifts of a
    shared machine better than a ratio of medians.
    """
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return summary(ratios)


def format_ms(values):
    """`"median ms (min-max)"` of a list of durations in seconds."""
    med, lo, hi = summary(values)
    return f"{1e3 * med:8.2f} ms ({1e3 * lo:.2f}-{1e3 * hi:.2f})"


def format_timings(timings):
    """Wall and CPU step time of a list of `Timing`s, median (min-max), and
    the median of the per-round ratios wall / CPU."""
    walls = [t.wall for t in timings]
    cpus = [t.cpu for t in timings]
    idle = statistics.median(w / c for w, c in zip(walls, cpus))
    return f"wall {format_ms(walls)}   CPU {format_ms(cpus)}   wall/CPU {idle:.2f}"


def timing_ratios(numerators, denominators):
    """Per-round ratios of two lists of `Timing`s: `{"wall": (median, min,
    max), "cpu": (median, min, max)}`."""
    return {
        field: ratio_spread(
            [getattr(t, field) for t in numerators], [getattr(t, field) for t in denominators]
        )
        for field in ("wall", "cpu")
    }


def verdict(spread, passes):
    """`"goal met (wall: yes, CPU: yes)"` for a `timing_ratios` result;
    `passes(median)` says whether a median ratio meets the goal."""
    wall, cpu = passes(spread["wall"][0]), passes(spread["cpu"][0])
    word = "goal met" if wall and cpu else "goal MISSED" if not (wall or cpu) else "goal met in part"
    return f"{word} (wall: {'yes' if wall else 'no'}, CPU: {'yes' if cpu else 'no'})"


def format_ratio(spread):
    """`"1.75x (1.70-1.81)"` of a `(median, min, max)` ratio."""
    med, lo, hi = spread
    return f"{med:.2f}x ({lo:.2f}-{hi:.2f})"


def peak_rss_mib():
    """Peak resident set size of this process, MiB (Linux: `ru_maxrss` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_line():
    """One line describing the machine and the versions measured."""
    return (
        f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()}, TF {tf.__version__}, Keras {keras.__version__}; "
        f"{load_line()}"
    )


def load_line():
    """The load averages (1, 5, 15 minutes): other jobs on the machine."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def mlp_data(n, seed=0):
    """Random regression data for the MLP benchmark: `(x, y)` float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, MLP_FEATURES)).astype("float32")
    y = rng.standard_normal((n, MLP_OUTPUTS)).astype("float32")
    return x, y


def mlp(seed=0):
    """The 2x1024 ReLU MLP of the benchmarks, built, as a `keras.Sequential`."""
    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input((MLP_FEATURES,)),
            keras.layers.Dense(MLP_WIDTH, "relu", kernel_initializer=init(seed)),
            keras.layers.Dense(MLP_WIDTH, "relu", kernel_initializer=init(seed + 1)),
            keras.layers.Dense(MLP_OUTPUTS, kernel_initializer=init(seed + 2)),
        ],
        name="mlp",
    )


def pendulum_setup(n_steps=100, n_trajectories=200, seed=0):
    """Pendulum data with `n_steps` time points: `(times, y0, observed)`."""
    from keras_hybrid.systems import pendulum

    return pendulum.simulate(n_trajectories=n_trajectories, n_steps=n_steps, seed=seed)


def pendulum_model(times, sam=None, seed=0):
    """The damped-pendulum hybrid (RK4, one step per time point)."""
    from keras_hybrid.systems import pendulum

    return pendulum.build_model(times, sam=sam, seed=seed)
