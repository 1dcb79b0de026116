"""The fitting driver behind `radius_path`: the validation split, one fit per
radius and seed, the physics-only reference and the per-sample
validation losses that the selection rules test.
"""

import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_hybrid import radius as _pkg
from keras_hybrid._dataset_input import arrays_from_dataset, as_sample_arrays, check_same_samples
from keras_hybrid._logging import quiet_retracing
from keras_hybrid._shape_checks import outputs_keyed_like
from keras_hybrid.layers import (
    _enclosing_layer_names,
    constant_units,
    is_physical_variable,
    physical_constants,
)
from keras_hybrid.summary import constants_table
from keras_hybrid.radius.result import RadiusPath
from keras_hybrid.radius.selection import RULES, _check_number, _check_paired_test, check_radii
from keras_hybrid.sam import SAM


def _take(data, index):
    if data is None:
        return None
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], data)


def _num_samples(data, arg="x"):
    return len(tf.nest.flatten(as_sample_arrays(data, arg))[0])


# The radii are compared on their per-sample validation losses (a paired
# test, or a standard error of the mean loss): one sample cannot do either.
MIN_VALIDATION_SAMPLES = 2


def _split(x, y, sample_weight, validation_split, split_seed):
    n = _num_samples(x)
    n_val = int(round(n * validation_split))
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"`validation_split` leaves no training or no validation sample with {n} "
            f"samples. Received: validation_split={validation_split!r}"
        )
    if n_val < MIN_VALIDATION_SAMPLES:
        raise ValueError(
            f"`validation_split` leaves {n_val} validation sample of {n}; choosing a radius "
            f"needs at least {MIN_VALIDATION_SAMPLES} (the radii are compared sample by sample). "
            "Pass a larger `validation_split` or `validation_data=(x_val, y_val)`. "
            f"Received: validation_split={validation_split!r}"
        )
    order = np.random.default_rng(split_seed).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return tuple(_take(a, train) for a in (x, y, sample_weight)), tuple(
        _take(a, val) for a in (x, y, sample_weight))


def _check_finite(named_data):
    """Raises for NaN or infinite inputs or targets, which every fit would
    otherwise report as a diverged loss (and the path choose no radius)."""
    from keras_hybrid.non_finite import non_finite_report

    for name, data in named_data.items():
        report = non_finite_report(name, tf.nest.map_structure(np.asarray, data))
        if report is not None:
            raise ValueError(
                f"{report} Every fit's loss would be NaN: drop those samples, or replace "
                "those values by any finite value and give their samples weight 0."
            )


def _neural_variables(model, template=None):
    """The network weights that the physics-only reference zeroes: not
    the constants, nor the weights of layers that `template` excludes from
    SAM (an encoder of per-sample constants is part of the physics)."""
    holders = (_enclosing_layer_names(model, include_owner=True)
               if template is not None and template.exclude else {})
    return [v for v in model.trainable_variables if not is_physical_variable(v)
            and not (holders and template.is_excluded(v.path, holders.get(id(v), ())))]


def _evaluate(model, x, y, batch_size, sample_weight=None):
    result = model.evaluate(x, y, sample_weight=sample_weight, batch_size=batch_size, verbose=0,
                            return_dict=True)
    return float(result["loss"])


def _by_output(spec, key, index, default):
    """The entry of a per-output compile argument (dict by output name, list
    by position, or one value for all)."""
    if isinstance(spec, dict):
        return spec.get(key, default)
    if isinstance(spec, (list, tuple)):
        return spec[index] if index < len(spec) else default
    return default if spec is None else spec


def _output_pairs(y, y_pred):
    """`[(name, target, prediction)]` per output of the model."""
    if isinstance(y_pred, dict):
        if not isinstance(y, dict) or set(y) != set(y_pred):
            raise ValueError("the targets must have the model's output names")
        return [(k, y[k], y_pred[k]) for k in y_pred]
    if isinstance(y_pred, (list, tuple)):
        if not isinstance(y, (list, tuple)) or len(y) != len(y_pred):
            raise ValueError("the targets must be as many as the model's outputs")
        return [(None, t, p) for t, p in zip(y, y_pred)]
    return [(None, y, y_pred)]


def _per_sample_losses(model, x, y, batch_size, sample_weight=None):
    """Per-sample validation losses (the compiled loss of each sample,
    times its weight, averaged over its remaining axes, e.g. the time
    steps of a trajectory; for several outputs the sum over them with the
    compiled `loss_weights`: their mean is `evaluate`'s loss), as a
    float64 array; `None` when a compiled loss is not a Keras loss (a
    name, a function or a `keras.losses.Loss`). Regularization penalties
    are not included: they are the same for every sample."""
    try:
        loss_weights = model.get_compile_config().get("loss_weights")
        w = None if sample_weight is None else np.asarray(sample_weight, "float64")
        y_pred = model.predict(x, batch_size=batch_size, verbose=0)
        total = None
        for index, (key, target, pred) in enumerate(_output_pairs(y, outputs_keyed_like(model, y, y_pred))):
            loss = keras.losses.get(_by_output(model.loss, key, index, None))
            if loss is None:
                return None
            target = keras.ops.convert_to_tensor(np.asarray(target), "float32")
            call = loss.call if isinstance(loss, keras.losses.Loss) else loss
            per_sample = np.asarray(keras.ops.convert_to_numpy(call(target, pred)), "float64")
            if w is not None:
                per_sample = per_sample * w.reshape(w.shape + (1,) * (per_sample.ndim - w.ndim))
            weight = float(_by_output(loss_weights, key, index, 1.0))
            term = weight * per_sample.reshape(len(per_sample), -1).mean(axis=1)
            total = term if total is None else total + term
        return total
    except (TypeError, ValueError, KeyError):
        return None


def _standard_error(model, x, y, batch_size, per_sample=None):
    """Standard error of the mean validation loss, from per-sample losses
    (`nan` without them, or with fewer than two)."""
    if per_sample is None:
        per_sample = _per_sample_losses(model, x, y, batch_size)
    if per_sample is None or len(per_sample) < 2 or not np.all(np.isfinite(per_sample)):
        return math.nan
    return float(np.std(per_sample, ddof=1) / math.sqrt(len(per_sample)))


def _net_share(model, x, batch_size, template=None):
    """`||f(x) - f_0(x)|| / ||f(x)||`, `f_0`: network weights set to zero
    (`_neural_variables`)."""
    neural = _neural_variables(model, template)
    if not neural:
        return 0.0
    def predict():   # every output, flattened into one vector
        out = model.predict(x, batch_size=batch_size, verbose=0)
        return np.concatenate([np.asarray(o, "float64").ravel() for o in keras.tree.flatten(out)])

    full = predict()
    saved = [keras.ops.convert_to_numpy(v.value) for v in neural]
    try:
        for v in neural:
            v.assign(keras.ops.zeros(v.shape, v.dtype))
        physics = predict()
    finally:
        for v, value in zip(neural, saved):
            v.assign(value)
    if not (np.all(np.isfinite(full)) and np.all(np.isfinite(physics))):
        return math.nan  # a diverged fit: no share to speak of
    return float(np.linalg.norm(full - physics) / max(np.linalg.norm(full), 1e-30))


def _build(build_model, sam, first_build):
    """`build_model(sam)`, checked; `first_build` (a dict, filled by the
    first call) holds the first model's constants and network size, which
    every later model must share: the path compares radii, not models."""
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
    _check_same_model(model, sam, first_build)
    return model


def _check_same_model(model, sam, first_build):
    rho = 0.0 if sam is None else sam.rho
    names = sorted(physical_constants(model))
    size = int(sum(np.prod(v.shape) for v in _neural_variables(model)))
    if not first_build:
        first_build.update(names=names, size=size, rho=rho)
        return
    if names != first_build["names"]:
        raise ValueError(
            "`build_model(sam)` must build models with the same physical constants at every "
            f"radius (the path compares each constant across radii). Received: "
            f"{first_build['names']} at rho={first_build['rho']} and {names} at rho={rho}"
        )
    if size != first_build["size"]:
        warnings.warn(
            f"`build_model(sam)` built a network of {size} weights at rho={rho} but "
            f"{first_build['size']} at rho={first_build['rho']}: the path then compares "
            "architectures as well as radii.",
            stacklevel=5,
        )


def _fit_row(build_model, sam, rho, seed, train, val, epochs, batch_size, fit_kwargs, first_build,
             template=None):
    keras.utils.set_random_seed(seed)
    model = _build(build_model, sam, first_build)
    initial = physical_constants(model)
    model.fit(train[0], train[1], sample_weight=train[2], epochs=epochs, batch_size=batch_size,
              **fit_kwargs)
    row = {"rho": rho, "seed": seed, **_scores(model, train, val, batch_size),
           "net_share": _net_share(model, train[0], batch_size, template), "initial_constants": initial,
           "untrained_constants": [c["name"] for c in constants_table(model) if not c["trainable"]]}
    per_sample = _per_sample_losses(model, val[0], val[1], batch_size, val[2])
    row["val_se"] = _standard_error(model, val[0], val[1], batch_size, per_sample)
    row["val_losses"] = None if per_sample is None else [float(v) for v in per_sample]
    return model, row


def _fit_physics_only(build_model, seed, train, val, epochs, batch_size, fit_kwargs, first_build,
                      template=None):
    keras.utils.set_random_seed(seed)
    model = _build(build_model, None, first_build)
    for v in _neural_variables(model, template):
        v.assign(keras.ops.zeros(v.shape, v.dtype))
        v.trainable = False
    if model.trainable_variables:
        model.fit(train[0], train[1], sample_weight=train[2], epochs=epochs,
                  batch_size=batch_size, **fit_kwargs)
    return {"rho": None, "seed": seed, **_scores(model, train, val, batch_size), "net_share": 0.0}


def _scores(model, train, val, batch_size):
    """The fitted constants and the training and validation losses."""
    return {
        "constants": physical_constants(model),
        "train_loss": _evaluate(model, *train[:2], batch_size, train[2]),
        "val_loss": _evaluate(model, *val[:2], batch_size, val[2]),
    }


def radius_path(
    build_model,
    x,
    y=None,
    *,
    rhos=None,
    validation_split=0.2,
    validation_data=None,
    sample_weight=None,
    epochs=100,
    seeds=1,
    sam=None,
    tolerance=0.25,
    noise_level=2.0,
    stable_tolerance=0.05,
    rule="paired",
    level=0.05,
    margin=0.0,
    paired_test="auto",
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
    Layers named in the template's `exclude` (an encoder of per-sample
    constants) are part of the physics there: they are kept and refitted,
    and they do not count in a row's network share.
    The radius is chosen by `choose_radius` from the validation losses,
    never from the constants themselves. By default (`rule="paired"`)
    every radius is compared with the radius of lowest mean validation
    loss by a one-sided paired test on the per-sample validation losses
    (each validation sample scored by both models; averaged over seeds),
    with Holm's correction over the radii at family-wise level `level`.
    The test is Wilcoxon's signed-rank test, which a few samples with
    large errors cannot sway, or the t test when the validation samples
    are too few for ranks to reject (`paired_test="auto"`):

    ```
    eligible = {rho : not significantly worse than the best,  L_val(rho) <= L_val(physics)}
    chosen   = max(eligible)
    ```

    The eligible set is a confidence set for the best radius: it is wide
    when a few validation samples cannot separate the radii (a dozen
    points know the loss only to about 40 %) and narrows as the data
    separate them. Without per-sample losses (a loss that is not a single
    Keras loss, or several outputs) the rule uses the unpaired test from
    the standard errors, or, without those either, the former relative
    rule (`rule="relative"`: within the larger of `tolerance` and
    `noise_level` standard errors of the best loss).

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
        x: training inputs (array, or list/dict of arrays), or a finite
            `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            batches (read once into arrays, then split; `y` and
            `sample_weight` are then `None`).
        y: training targets.
        rhos: radii to try; `0` is plain training. Defaults to
            `(0, 0.01, 0.03, 0.1, 0.3, 1)`.
        validation_split: fraction of the samples held out for validation,
            drawn at random with `split_seed` (not the last samples, as
            Keras does: sorted data would give an extrapolation set).
            Ignored when `validation_data` is given. Defaults to `0.2`.
        validation_data: `(x_val, y_val)` or `(x_val, y_val, w_val)`, a
            finite `tf.data.Dataset` of such batches, or `None`. Defaults
            to `None`.
        sample_weight: per-sample weights of `x`, `y` (e.g. inverse
            variances), split with the samples; every fit, loss and
            validation comparison uses them. Defaults to `None`.
        epochs: epochs of every fit. Defaults to `100`.
        seeds: number of seeds per radius (seeds `0..seeds-1`), or a list
            of seeds. Defaults to `1`.
        sam: template `SAM` whose `rho` is varied. Defaults to `SAM()`
            (network weights only).
        tolerance: relative slack of the relative rule. Defaults to `0.25`.
        noise_level: standard errors of the best validation loss counted as
            noise by the relative rule (`0`: relative slack only).
            Defaults to `2.0`.
        stable_tolerance: largest relative spread of a stable constant.
            Defaults to `0.05`.
        rule: `"paired"` (significance test) or `"relative"` (slack).
            Defaults to `"paired"`.
        level: family-wise significance level of the paired rule, in
            (0, 1). Defaults to `0.05`.
        margin: fraction, in [0, 1), of the best radius's improvement over
            the physics part alone that a radius may give up before the
            paired rule counts it as worse (`0`: any significant
            difference counts). Defaults to `0.0`.
        paired_test: the paired rule's test: `"auto"`, `"signed_rank"`
            or `"t"` (see `kh.radius_p_values`). Defaults to `"auto"`.
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
    rhos = _pkg.DEFAULT_RHOS if rhos is None else rhos
    try:
        rhos = check_radii(rhos)
    except TypeError as error:
        raise ValueError(f"`rhos` must be radii >= 0. Received: rhos={rhos!r}") from error
    if not rhos:
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
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}. Received: rule={rule!r}")
    level = _check_number("level", level, minimum=0.0)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1). Received: level={level!r}")
    margin = _check_number("margin", margin, minimum=0.0)
    if margin >= 1.0:
        raise ValueError(f"`margin` must be in [0, 1). Received: margin={margin!r}")
    _check_paired_test(paired_test)
    x, y, sample_weight = arrays_from_dataset(x, y, sample_weight)
    check_same_samples({"x": x, "y": y})
    _check_finite({"x": x, "y": y})
    if isinstance(validation_data, tf.data.Dataset):
        validation_data = arrays_from_dataset(validation_data, None, None, "validation_data")
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, "float32")
        if sample_weight.ndim == 0 or len(sample_weight) != _num_samples(x) or not np.all(
                np.isfinite(sample_weight)) or np.any(sample_weight < 0):
            raise ValueError(
                f"`sample_weight` must hold one finite weight >= 0 per sample of `x` "
                f"({_num_samples(x)}). Received: sample_weight of shape {sample_weight.shape}"
            )
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError(
                "`validation_data` must be a tuple `(x_val, y_val)` or `(x_val, y_val, w_val)`. "
                f"Received: validation_data of type {type(validation_data).__name__}"
            )
        train, val = (x, y, sample_weight), (tuple(validation_data) + (None,))[:3]
        check_same_samples({"validation_data[0]": val[0], "validation_data[1]": val[1]})
        _check_finite({"validation_data[0]": val[0], "validation_data[1]": val[1]})
        n_val = _num_samples(val[0], "validation_data")
        if n_val < MIN_VALIDATION_SAMPLES:
            raise ValueError(
                f"`validation_data` must hold at least {MIN_VALIDATION_SAMPLES} samples (the "
                f"radii are compared sample by sample). Received: {n_val} sample(s)"
            )
    else:
        validation_split = _check_number("validation_split", validation_split, minimum=0.0)
        train, val = _split(x, y, sample_weight, validation_split, split_seed)
    fit_kwargs.setdefault("verbose", 0)

    config = template.get_config()
    rows, best_models, units, first_build = [], {}, {}, {}
    # One model per radius: TensorFlow's retracing count adds them up.
    with quiet_retracing():
        for rho in rhos:
            sam_at = None if rho == 0 else SAM.from_config({**config, "rho": rho})
            best_val = math.inf
            for seed in seeds:
                model, row = _fit_row(build_model, sam_at, rho, seed, train, val, epochs,
                                      batch_size, fit_kwargs, first_build, template)
                rows.append(row)
                if not units:
                    units = constant_units(model)
                # The best finite fit: a diverged seed's nan, kept as the loss to
                # beat, would compare false with every later one.
                if rho not in best_models or row["val_loss"] < best_val:
                    best_val = row["val_loss"] if math.isfinite(row["val_loss"]) else math.inf
                    best_models[rho] = model
        reference = None
        if physics_only:
            reference = _fit_physics_only(build_model, seeds[0], train, val, epochs, batch_size,
                                          fit_kwargs, first_build, template)
    return RadiusPath(rows, reference, template, tolerance, stable_tolerance, units, best_models,
                      noise_level, rule=rule, level=level, margin=margin, paired_test=paired_test)
