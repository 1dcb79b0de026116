"""Time per `fit` epoch on a dozen points: what small-data fits pay per epoch.

A 1 -> 32 -> 1 tanh network on 12 points, one full-batch step per epoch,
fitted for `--epochs` epochs by `keras.Model`, by `kh.HybridModel(sam=None)`
(our plain step) and by `kh.HybridModel` (SAM), in alternating rounds. With
one tiny step per epoch, the epoch time is almost all of `fit`'s own
per-epoch work (data iterator, callbacks, logs), which is why the
experiments pack many steps into one epoch (`repeat`).

Each model is also fitted from `kh.repeated_dataset` (one shuffled dataset
that repeats, with `steps_per_epoch`; "repeated dataset" rows): Keras 3
builds a new data iterator at every epoch for NumPy arrays, and not for a
repeated dataset, so the difference between `keras.Model`'s two rows is
that iterator's cost. The hybrid models' `fit` feeds arrays through one
iterator by itself, so their two rows differ only by the pipelines.

Run:

```
python benchmarks/epoch_overhead.py [--epochs 200] [--rounds 3]
```
"""

import argparse
import statistics
import time

import _common as common
import keras
import numpy as np

import keras_hybrid as kh


def build(kind):
    x = keras.Input((1,))
    y = keras.layers.Dense(1)(keras.layers.Dense(32, "tanh")(x))
    model = {"keras.Model": lambda: keras.Model(x, y),
             "HybridModel plain": lambda: kh.HybridModel(x, y, sam=None),
             "HybridModel SAM": lambda: kh.HybridModel(x, y)}[kind]()
    model.compile(optimizer="adam", loss="mse")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="epochs per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args(argv)
    x = np.linspace(0.02, 1.1, 12, dtype="float32")[:, None]
    y = 200.0 * x / (0.06 + x)
    kinds = ("keras.Model", "HybridModel plain", "HybridModel SAM")
    models = {kind: build(kind) for kind in kinds}
    dataset, steps = kh.repeated_dataset(x, y, batch_size=len(x))

    def measure(model, repeated):
        start = time.perf_counter()
        if repeated:
            model.fit(dataset, steps_per_epoch=steps, epochs=args.epochs, shuffle=False, verbose=0)
        else:
            model.fit(x, y, epochs=args.epochs, batch_size=len(x), verbose=0)
        return (time.perf_counter() - start) / args.epochs * 1e3

    print(common.machine_line())
    runs = {}
    for kind, model in models.items():
        runs[kind] = lambda m=model: measure(m, repeated=False)
        runs[f"{kind}, repeated dataset"] = lambda m=model: measure(m, repeated=True)
    results = common.interleaved(runs, args.rounds)
    for label in runs:
        values = results[label]
        print(f"  {label:<36} {statistics.median(values):6.1f} ms per epoch "
              f"(range {min(values):.1f}-{max(values):.1f}, {args.rounds} rounds of {args.epochs} epochs)")


if __name__ == "__main__":
    main()
