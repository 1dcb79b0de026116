"""The radius path: one fit per SAM radius, the radius chosen from
validation data, and the physics part alone as a reference.

SAM's ball has a fixed radius in weight space, so the radius that protects
the physical constants moves with the scale of the network's inputs and
weights: a radius too small changes nothing, one too large underfits. The
radius path trains the same model at several radii and shows what each
radius does to the constants and to the validation loss, so that the
radius is chosen from data and the user sees how much the constants
depend on it.
"""

import math
import numbers

import keras
import numpy as np

from keras_hybrid.layers import constant_units, is_physical_variable, physical_constants
from keras_hybrid.sam import SAM

DEFAULT_RHOS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)


# -- pure selection rule ------------------------------------------------------


def choose_radius(rhos, val_losses, tolerance=0.25, reference_loss=None,
                  standard_errors=None, noise_level=2.0):
    """The radius chosen from validation losses alone.

    The rule prefers the strongest regularization: the largest radius whose
    validation loss is within the noise of the best one. "Within the noise"
    is the larger of a relative slack `tolerance` and `noise_level`
    standard errors of the best validation loss (the standard error of a
    mean over few validation samples is large: with 12 points, about 40 %
    of the loss itself, so a fixed 25 % slack would pick plain training by
    chance). When `reference_loss` (the physics part alone) is given,
    radii whose validation loss is worse than it are not eligible either,
    unless no radius is as good, in which case the best radius is returned.

    ```
    best     = min_r L_val(r),   se = standard error of L_val at that r
    limit    = max((1 + tolerance) * best, best + noise_level * se)
    eligible = {r : L_val(r) <= limit  and  L_val(r) <= L_ref}
    chosen   = max(eligible)        (argmin_r L_val(r) if eligible is empty)
    ```

    Args:
        rhos: sequence of radii.
        val_losses: validation loss of each radius (non-finite losses are
            never chosen).
        tolerance: relative slack, >= 0. Defaults to `0.25`.
        reference_loss: validation loss of the physics part alone, or
            `None`. Defaults to `None`.
        standard_errors: standard error of each validation loss (e.g. the
            standard deviation of the per-sample losses over the square
            root of their number), or `None` to use `tolerance` alone.
            Defaults to `None`.
        noise_level: how many standard errors count as noise. Defaults
            to `2.0`.

    Returns:
        The chosen radius (an element of `rhos`), or `None` if no
        validation loss is finite.

    Example:

    >>> choose_radius([0.0, 0.1, 1.0], [1.0, 1.1, 2.0])
    0.1
    """
    if len(rhos) != len(val_losses):
        raise ValueError(
            "`rhos` and `val_losses` must have the same length. Received: "
            f"len(rhos)={len(rhos)}, len(val_losses)={len(val_losses)}"
        )
    limit = selection_limit(rhos, val_losses, tolerance, reference_loss, standard_errors,
                            noise_level)
    finite = [(r, v) for r, v in zip(rhos, val_losses) if math.isfinite(v)]
    if not finite:
        return None
    best_rho, _ = min(finite, key=lambda rv: (rv[1], rv[0]))
    eligible = [r for r, v in finite if v <= limit]
    return max(eligible) if eligible else best_rho


def selection_limit(rhos, val_losses, tolerance=0.25, reference_loss=None,
                    standard_errors=None, noise_level=2.0):
    """The largest validation loss `choose_radius` accepts (see there)."""
    tolerance = _check_number("tolerance", tolerance, minimum=0.0)
    noise_level = _check_number("noise_level", noise_level, minimum=0.0)
    if standard_errors is not None and len(standard_errors) != len(rhos):
        raise ValueError(
            "`standard_errors` must have one entry per radius. Received: "
            f"len(standard_errors)={len(standard_errors)}, len(rhos)={len(rhos)}"
        )
    finite = [(i, v) for i, v in enumerate(val_losses) if math.isfinite(v)]
    if not finite:
        return math.nan
    best_index, best = min(finite, key=lambda iv: (iv[1], rhos[iv[0]]))
    limit = (1.0 + tolerance) * best
    if standard_errors is not None and math.isfinite(standard_errors[best_index]):
        limit = max(limit, best + noise_level * standard_errors[best_index])
    if reference_loss is not None and math.isfinite(reference_loss):
        limit = min(limit, reference_loss)
    return limit


def _check_number(arg, value, minimum=None, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an integer" if integer else "a real number"
        raise TypeError(f"`{arg}` must be {expected}. Received: {arg}={value!r}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"`{arg}` must be finite and >= {minimum}. Received: {arg}={value!r}")
    return int(value) if integer else float(value)


# -- the path -----------------------------------------------------------------


class RadiusPath:
    """Result of `radius_path`: one row per (radius, seed).

    Attributes:
        rows: list of dicts, one per fit, with `rho`, `seed`, `constants`
            (`name -> value`), `train_loss`, `val_loss` and `net_share`
            (how much of the model's output on the training inputs is the
            network's: `||f(x) - f_0(x)|| / ||f(x)||`, where `f_0` is the
            model with its network weights set to zero; for an additive
            correction that is the correction's share).
        physics_only: the same dict for the physics part alone (network
            weights zeroed and frozen, constants refitted), or `None`.
        rhos: the radii, in increasing order.
        summary: one dict per radius, the means over seeds (`rho`,
            `train_loss`, `val_loss`, `net_share`, `constants`) and the
            standard deviation of each constant over seeds (`constants_std`).
        chosen: the radius chosen by `choose_radius` from the mean
            validation losses (and the physics-only loss as reference).
        eligible: the radii within the tolerance of the best validation
            loss (and not worse than the physics part alone).
        stable: `name -> bool`: the constant moved by at most
            `stable_tolerance` (relative spread) over the eligible radii.
        spread: `name -> float`: that relative spread
            `(max - min) / |median|` over the eligible radii.
        network_needed: `False` when the physics part alone fits the
            validation data at least as well as every radius.
        best_model: the fitted model at the chosen radius (the seed with
            the lowest validation loss).
        units: `name -> unit`.
        sam: the SAM settings whose radius was varied.
        tolerance: the selection tolerance.
    """

    def __init__(self, rows, physics_only, sam, tolerance, stable_tolerance, units, models,
                 noise_level=2.0):
        self.rows = rows
        self.noise_level = noise_level
        self.physics_only = physics_only
        self.sam = sam
        self.tolerance = tolerance
        self.stable_tolerance = stable_tolerance
        self.units = units
        self.rhos = sorted({row["rho"] for row in rows})
        self.summary = [self._summarize(rho) for rho in self.rhos]
        reference = None if physics_only is None else physics_only["val_loss"]
        val = [s["val_loss"] for s in self.summary]
        se = [s["val_se"] for s in self.summary]
        self.chosen = choose_radius(self.rhos, val, tolerance, reference, se, noise_level)
        finite = [v for v in val if math.isfinite(v)]
        best = min(finite) if finite else math.nan
        limit = selection_limit(self.rhos, val, tolerance, reference, se, noise_level)
        self.limit = limit
        self.eligible = [r for r, v in zip(self.rhos, val) if math.isfinite(v) and v <= limit]
        if not self.eligible and self.chosen is not None:
            self.eligible = [self.chosen]
        self.network_needed = not (
            reference is not None and math.isfinite(reference) and finite and reference <= best
        )
        self.spread, self.stable = self._stability()
        self.best_model = models.get(self.chosen)

    def _summarize(self, rho):
        rows = [row for row in self.rows if row["rho"] == rho]
        names = list(rows[0]["constants"])
        values = {n: np.array([row["constants"][n] for row in rows]) for n in names}
        return {
            "rho": rho,
            "train_loss": float(np.mean([row["train_loss"] for row in rows])),
            "val_loss": float(np.mean([row["val_loss"] for row in rows])),
            "val_se": float(np.mean([row.get("val_se", math.nan) for row in rows])),
            "net_share": float(np.mean([row["net_share"] for row in rows])),
            "constants": {n: float(np.mean(v)) for n, v in values.items()},
            "constants_std": {n: float(np.std(v)) for n, v in values.items()},
        }

    def _stability(self):
        chosen = [s for s in self.summary if s["rho"] in self.eligible]
        spread, stable = {}, {}
        if not chosen:
            return spread, stable
        for name in chosen[0]["constants"]:
            values = np.array([s["constants"][name] for s in chosen])
            scale = max(abs(float(np.median(values))), 1e-30)
            spread[name] = float((values.max() - values.min()) / scale)
            stable[name] = len(values) >= 2 and spread[name] <= self.stable_tolerance
        return spread, stable

    def selection_ranges(self):
        """`name -> (min, max)` of each constant over the fits (all seeds)
        at the eligible radii: the spread that the validation data cannot
        resolve, i.e. the model-selection part of a constant's uncertainty
        (`kh.constant_uncertainty(..., path=path)` widens its intervals by
        it)."""
        rows = [row for row in self.rows if row["rho"] in self.eligible]
        if not rows:
            return {}
        return {
            name: (min(row["constants"][name] for row in rows),
                   max(row["constants"][name] for row in rows))
            for name in rows[0]["constants"]
        }

    def constants_at(self, rho):
        """Mean constants over seeds at radius `rho`, `name -> value`."""
        for s in self.summary:
            if s["rho"] == rho:
                return dict(s["constants"])
        raise ValueError(f"`rho` must be one of {self.rhos}. Received: rho={rho!r}")

    def to_dict(self):
        """JSON-serializable summary (no model)."""
        return {
            "sam": self.sam.get_config(),
            "tolerance": self.tolerance,
            "stable_tolerance": self.stable_tolerance,
            "noise_level": self.noise_level,
            "limit": self.limit,
            "rows": self.rows,
            "physics_only": self.physics_only,
            "summary": self.summary,
            "chosen": self.chosen,
            "eligible": self.eligible,
            "stable": self.stable,
            "spread": self.spread,
            "network_needed": self.network_needed,
            "units": self.units,
        }

    @classmethod
    def from_dict(cls, config):
        """A `RadiusPath` from `to_dict()`'s output (without its models:
        `best_model` is `None`)."""
        return cls(config["rows"], config["physics_only"], SAM.from_config(config["sam"]),
                   config["tolerance"], config.get("stable_tolerance", 0.05), config["units"], {},
                   config.get("noise_level", 2.0))

    def __str__(self):
        names = list(self.summary[0]["constants"]) if self.summary else []
        heads = [f"{n} [{self.units[n]}]" if self.units.get(n) else n for n in names]
        width = max([10] + [len(h) for h in heads])
        seeds = len(self.rows) // max(len(self.rhos), 1)
        lines = [
            f"Radius path: {type(self.sam).__name__}(perturb={self.sam.perturb!r}"
            f"{', adaptive=True' if self.sam.adaptive else ''}), "
            f"{seeds} seed{'s' if seeds != 1 else ''} per radius",
            f"{'rho':>10}  {'train loss':>10}  {'val loss':>10}  {'net share':>9}  "
            + "  ".join(f"{h:>{width}}" for h in heads),
        ]

        def line(label, row, mark=""):
            cells = "  ".join(f"{row['constants'][n]:>{width}.5g}" for n in names)
            share = row.get("net_share", math.nan)
            return (
                f"{label:>10}  {row['train_loss']:>10.4g}  {row['val_loss']:>10.4g}  "
                f"{share:>9.3f}  {cells}{mark}"
            )

        if self.physics_only is not None:
            lines.append(line("physics", self.physics_only))
        for s in self.summary:
            label = "0 (plain)" if s["rho"] == 0 else f"{s['rho']:g}"
            mark = "  <- chosen" if s["rho"] == self.chosen else (
                "  (eligible)" if s["rho"] in self.eligible else "")
            lines.append(line(label, s, mark))
        lines.append(
            f"chosen: rho = {self.chosen} (largest radius whose validation loss is at most "
            f"{self.limit:.4g}: the best plus the larger of {self.tolerance:.0%} and "
            f"{self.noise_level:g} standard errors"
            + (", and not above the physics part alone)" if self.physics_only else ")")
        )
        if not self.network_needed:
            lines.append(
                "the physics part alone fits the validation data at least as well as every "
                "radius: the network may not be needed"
            )
        for name in names:
            if name in self.spread:
                verdict = "stable" if self.stable[name] else "NOT stable"
                lines.append(
                    f"{name}: {verdict} over the eligible radii {self.eligible} "
                    f"(relative spread {self.spread[name]:.2%}, threshold "
                    f"{self.stable_tolerance:.0%})"
                )
        return "\n".join(lines)

    def plot(self, axes=None):
        """Constants and validation loss against the radius (matplotlib).

        Radius 0 (plain training) is drawn at the left edge of the log axis;
        the physics part alone as dashed lines.

        Args:
            axes: two matplotlib axes, or `None` for a new figure.

        Returns:
            The two axes.
        """
        import matplotlib.pyplot as plt  # optional dependency, imported lazily

        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        positive = [r for r in self.rhos if r > 0]
        zero_at = min(positive) / 3 if positive else 1.0
        x = [r if r > 0 else zero_at for r in self.rhos]
        for name in self.summary[0]["constants"]:
            y = [s["constants"][name] for s in self.summary]
            err = [s["constants_std"][name] for s in self.summary]
            line = axes[0].errorbar(x, y, yerr=err, marker="o", label=name)
            if self.physics_only is not None:
                axes[0].axhline(self.physics_only["constants"][name], ls="--",
                                color=line[0].get_color(), alpha=0.6)
        axes[1].plot(x, [s["val_loss"] for s in self.summary], "o-", label="validation")
        axes[1].plot(x, [s["train_loss"] for s in self.summary], "s:", label="training")
        if self.physics_only is not None:
            axes[1].axhline(self.physics_only["val_loss"], ls="--", color="gray",
                            label="physics only (validation)")
        for ax in axes:
            ax.set_xscale("log")
            if self.chosen is not None:
                ax.axvline(self.chosen if self.chosen > 0 else zero_at, color="k", lw=0.8)
            ax.set_xlabel("SAM radius rho (leftmost point: plain training)")
        axes[0].set_ylabel("constant")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("loss")
        axes[0].legend()
        axes[1].legend()
        return axes


def _take(data, index):
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], data)


def _num_samples(data):
    return len(np.asarray(keras.tree.flatten(data)[0]))


def _split(x, y, validation_split, split_seed):
    n = _num_samples(x)
    n_val = int(round(n * validation_split))
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"`validation_split` leaves no training or no validation sample with {n} "
            f"samples. Received: validation_split={validation_split!r}"
        )
    order = np.random.default_rng(split_seed).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (_take(x, train), _take(y, train)), (_take(x, val), _take(y, val))


def _neural_variables(model):
    return [v for v in model.trainable_variables if not is_physical_variable(v)]


def _evaluate(model, x, y, batch_size):
    result = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return float(result["loss"])


def _standard_error(model, x, y, batch_size):
    """Standard error of the mean validation loss, from per-sample losses.

    Uses the compiled loss when it is a single Keras loss (a name, a
    function or a `keras.losses.Loss`); `nan` otherwise (the selection then
    relies on `tolerance` alone).
    """
    try:
        loss = keras.losses.get(model.loss)
        if loss is None or isinstance(y, (dict, list, tuple)):
            return math.nan
        y_pred = model.predict(x, batch_size=batch_size, verbose=0)
        if isinstance(loss, keras.losses.Loss):
            per_sample = loss.call(keras.ops.convert_to_tensor(y, "float32"), y_pred)
        else:
            per_sample = loss(keras.ops.convert_to_tensor(y, "float32"), y_pred)
        per_sample = np.asarray(keras.ops.convert_to_numpy(per_sample), "float64")
        per_sample = per_sample.reshape(len(per_sample), -1).mean(axis=1)
    except (TypeError, ValueError):
        return math.nan
    if len(per_sample) < 2:
        return math.nan
    return float(np.std(per_sample, ddof=1) / math.sqrt(len(per_sample)))


def _net_share(model, x, batch_size):
    """`||f(x) - f_0(x)|| / ||f(x)||`, `f_0`: network weights set to zero."""
    neural = _neural_variables(model)
    if not neural:
        return 0.0
    full = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), "float64")
    saved = [keras.ops.convert_to_numpy(v.value) for v in neural]
    try:
        for v in neural:
            v.assign(keras.ops.zeros(v.shape, v.dtype))
        physics = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), "float64")
    finally:
        for v, value in zip(neural, saved):
            v.assign(value)
    return float(np.linalg.norm(full - physics) / max(np.linalg.norm(full), 1e-30))


def _build(build_model, sam):
    model = build_model(sam)
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`build_model(sam)` must return a compiled `keras.Model`. Received: "
            f"{type(model).__name__}"
        )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "`build_model(sam)` must return a compiled model (call `model.compile(...)` "
            "inside it)."
        )
    if sam is not None and getattr(model, "sam", None) != sam:
        raise ValueError(
            "`build_model(sam)` must train with the `sam` it is given, e.g. "
            "`kh.HybridModel(inputs, outputs, sam=sam)` or `kh.SAMModel(net, sam=sam)`. "
            f"Received a model whose sam is {getattr(model, 'sam', 'missing')!r} "
            f"for sam={sam!r}"
        )
    return model


def _fit_row(build_model, sam, rho, seed, train, val, epochs, batch_size, fit_kwargs):
    keras.utils.set_random_seed(seed)
    model = _build(build_model, sam)
    model.fit(train[0], train[1], epochs=epochs, batch_size=batch_size, **fit_kwargs)
    row = {
        "rho": rho,
        "seed": seed,
        "constants": physical_constants(model),
        "train_loss": _evaluate(model, train[0], train[1], batch_size),
        "val_loss": _evaluate(model, val[0], val[1], batch_size),
        "val_se": _standard_error(model, val[0], val[1], batch_size),
        "net_share": _net_share(model, train[0], batch_size),
    }
    return model, row


def _fit_physics_only(build_model, seed, train, val, epochs, batch_size, fit_kwargs):
    keras.utils.set_random_seed(seed)
    model = _build(build_model, None)
    for v in _neural_variables(model):
        v.assign(keras.ops.zeros(v.shape, v.dtype))
        v.trainable = False
    if model.trainable_variables:
        model.fit(train[0], train[1], epochs=epochs, batch_size=batch_size, **fit_kwargs)
    return {
        "rho": None,
        "seed": seed,
        "constants": physical_constants(model),
        "train_loss": _evaluate(model, train[0], train[1], batch_size),
        "val_loss": _evaluate(model, val[0], val[1], batch_size),
        "net_share": 0.0,
    }


def radius_path(
    build_model,
    x,
    y,
    *,
    rhos=None,
    validation_split=0.2,
    validation_data=None,
    epochs=100,
    seeds=1,
    sam=None,
    tolerance=0.25,
    noise_level=2.0,
    stable_tolerance=0.05,
    physics_only=True,
    batch_size=None,
    split_seed=0,
    **fit_kwargs,
):
    """Fits one model per SAM radius and chooses the radius from validation data.

    For each radius `rho` (and each seed), `build_model(sam)` builds and
    compiles a fresh model with `sam` = the template `sam` at radius `rho`
    (`None` for `rho = 0`: plain training), which is fitted on the training
    part and scored on the validation part. The physics part alone (the
    same model with its network weights set to zero and frozen, constants
    refitted) is fitted too, as a reference: is the network needed at all?
    The radius is chosen by `choose_radius` from the mean validation losses
    over seeds, never from the constants themselves:

    ```
    limit  = max((1 + tolerance) min L_val, min L_val + noise_level * se)
    chosen = max{rho : L_val(rho) <= limit  and  L_val(rho) <= L_val(physics)}
    ```

    where `se` is the standard error of the best validation loss, from its
    per-sample losses: on a dozen validation points the loss is known only
    to about 40 %, and a radius within that noise of the best is as good.

    Constants that stay within `stable_tolerance` (relative spread) over
    the eligible radii are marked stable; a constant that moves a lot over
    radii of equal validation loss is determined by the regularization,
    not by the data.

    The physics-only reference assumes that a network with zero weights
    contributes nothing (true for an additive correction ending in a
    `Dense` layer); pass `physics_only=False` for other architectures.
    `keras.utils.set_random_seed(seed)` is called before each fit, which
    also resets Python's and NumPy's global generators.

    Args:
        build_model: callable `build_model(sam) -> keras.Model`, returning a
            *compiled* model that trains with the given `SAM` settings (or
            with plain steps for `None`), e.g. a `HybridModel`.
        x: training inputs (array, or list/dict of arrays).
        y: training targets.
        rhos: radii to try; `0` is plain training. Defaults to
            `(0, 0.01, 0.03, 0.1, 0.3, 1)`.
        validation_split: fraction of the samples held out for validation,
            drawn at random with `split_seed` (not the last samples, as
            Keras does: sorted data would give an extrapolation set).
            Ignored when `validation_data` is given. Defaults to `0.2`.
        validation_data: `(x_val, y_val)`, or `None`. Defaults to `None`.
        epochs: epochs of every fit. Defaults to `100`.
        seeds: number of seeds per radius (seeds `0..seeds-1`), or a list
            of seeds. Defaults to `1`.
        sam: template `SAM` whose `rho` is varied. Defaults to `SAM()`
            (network weights only).
        tolerance: relative slack of the selection rule. Defaults to `0.25`.
        noise_level: standard errors of the best validation loss counted as
            noise by the selection rule (`0`: relative slack only).
            Defaults to `2.0`.
        stable_tolerance: largest relative spread of a stable constant.
            Defaults to `0.05`.
        physics_only: fit the physics-only reference. Defaults to `True`.
        batch_size: batch size of `fit`, `evaluate` and `predict`.
            Defaults to `None` (Keras's default, 32).
        split_seed: seed of the random validation split. Defaults to `0`.
        **fit_kwargs: passed to every `fit` (e.g. `verbose`, `callbacks`;
            `verbose` defaults to `0`).

    Returns:
        A `RadiusPath`, whose `str()` is a table; `.chosen` is the radius
        and `.best_model` the model fitted with it.

    Example:

    ```python
    def build(sam):
        model = kh.HybridModel(inputs, outputs, sam=sam)   # fresh layers each call
        model.compile(optimizer="adam", loss="mse")
        return model

    path = kh.radius_path(build, x, y, epochs=200)
    print(path)
    model = path.best_model
    ```
    """
    if not callable(build_model):
        raise TypeError(f"`build_model` must be callable. Received: build_model={build_model!r}")
    rhos = DEFAULT_RHOS if rhos is None else rhos
    try:
        rhos = [_check_number("rhos[i]", r, minimum=0.0) for r in rhos]
    except (TypeError, ValueError) as error:
        raise ValueError(f"`rhos` must be radii >= 0. Received: rhos={rhos!r}") from error
    if not rhos or len(set(rhos)) != len(rhos):
        raise ValueError(f"`rhos` must be a non-empty list of distinct radii. Received: rhos={rhos!r}")
    rhos = sorted(rhos)
    epochs = _check_number("epochs", epochs, minimum=1, integer=True)
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = list(range(_check_number("seeds", seeds, minimum=1, integer=True)))
    else:
        seeds = [_check_number("seeds[i]", s, minimum=0, integer=True) for s in seeds]
        if not seeds:
            raise ValueError(f"`seeds` must not be empty. Received: seeds={seeds!r}")
    template = SAM() if sam is None else sam
    if not isinstance(template, SAM):
        raise TypeError(f"`sam` must be a `kh.SAM` or None. Received: sam={sam!r}")
    tolerance = _check_number("tolerance", tolerance, minimum=0.0)
    noise_level = _check_number("noise_level", noise_level, minimum=0.0)
    stable_tolerance = _check_number("stable_tolerance", stable_tolerance, minimum=0.0)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(
                "`validation_data` must be a tuple `(x_val, y_val)`. "
                f"Received: validation_data of type {type(validation_data).__name__}"
            )
        train, val = (x, y), tuple(validation_data)
    else:
        validation_split = _check_number("validation_split", validation_split, minimum=0.0)
        train, val = _split(x, y, validation_split, split_seed)
    fit_kwargs.setdefault("verbose", 0)

    config = template.get_config()
    rows, best_models, units = [], {}, {}
    for rho in rhos:
        sam_at = None if rho == 0 else SAM.from_config({**config, "rho": rho})
        best_val = math.inf
        for seed in seeds:
            model, row = _fit_row(build_model, sam_at, rho, seed, train, val, epochs,
                                  batch_size, fit_kwargs)
            rows.append(row)
            if not units:
                units = constant_units(model)
            if rho not in best_models or row["val_loss"] < best_val:
                best_val = row["val_loss"]
                best_models[rho] = model
    reference = None
    if physics_only:
        reference = _fit_physics_only(build_model, seeds[0], train, val, epochs, batch_size,
                                      fit_kwargs)
    path = RadiusPath(rows, reference, template, tolerance, stable_tolerance, units, best_models,
                      noise_level)
    return path
