"""Profile likelihood of one constant: refits with it held fixed, on a copy
of the model (`clone_for_refit`, `fresh_compile`).
"""

import math
import numbers
import time
import warnings as _warnings

import keras
import numpy as np

from keras_hybrid import uncertainty as un
from keras_hybrid._dataset_input import arrays_from_dataset
from keras_hybrid._logging import quiet_retracing
from keras_hybrid.diagnostics.residuals import _check_is_model, _checked_data, _Residuals
from keras_hybrid.diagnostics.results import ProfileLikelihood
from keras_hybrid.layers import ScientificLayer, _constant_spec, _function_name, _keyed_constant_variables


def _layer_owning(model, variable, name):
    """`(layer, local name)`: the `ScientificLayer` of `model` holding
    constant `variable` (the constant `name`, for the error)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, ScientificLayer) and any(v is variable for v in layer._raw.values()):
            return layer, _constant_spec(variable).name
    raise ValueError(f"No ScientificLayer of the model owns constant {name!r}.")


def _owner_layer(model, name):
    keyed = {k: v for k, v, _ in _keyed_constant_variables(model)}
    if name not in keyed:
        raise ValueError(
            f"Unknown constant `name`. The model's constants are {sorted(keyed)}. Received: name={name!r}"
        )
    return _layer_owning(model, keyed[name], name)


def _owner_layer_in_copy(model, copy, name):
    """`_owner_layer` of `copy` (`clone_for_refit(model)`) for constant
    `name` of `model`, found by the variable's position: a key made of
    automatic layer names (`scientific_layer/R`) names another layer in a
    copy rebuilt from the config."""
    variable = {k: v for k, v, _ in _keyed_constant_variables(model)}[name]
    index = next(i for i, v in enumerate(model.weights) if v is variable)
    return _layer_owning(copy, copy.weights[index], name)


def _spec(model, name):
    """The `PhysicalConstant` of constant `name` (a key of `physical_constants`)."""
    return {k: s for k, _, s in _keyed_constant_variables(model)}[name]


def clone_for_refit(model):
    """A copy of `model` (architecture, weights and compile settings, with
    a fresh optimizer of the same configuration), for refits that must not
    touch the original. The equations must be registered serializable."""
    try:
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    except (TypeError, ValueError) as error:
        equations = sorted({
            _function_name(layer.equation)
            for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, ScientificLayer)
        })
        raise TypeError(
            f"Model {model.name!r} cannot be copied for the refits: Keras could not rebuild it "
            f"from its config. Are its equations {equations} (and any custom layer) registered "
            "with `@keras.saving.register_keras_serializable()`? (Keras said: "
            f"{str(error).splitlines()[0][:300]})"
        ) from error
    clone.build_from_config(model.get_build_config()) if not clone.built else None
    clone.set_weights(model.get_weights())
    if getattr(model, "compiled", False) or getattr(model, "optimizer", None) is not None:
        fresh_compile(clone, model)
    return clone


def fresh_compile(model, like=None):
    """Recompiles `model` with the compile settings of `like` (default: its
    own) and a fresh optimizer cloned from the optimizer's config. Needed
    after changing which variables are trainable: a Keras 3 optimizer is
    built for a fixed variable list."""
    like = like or model
    config = like.get_compile_config()
    if config is None:
        raise ValueError(f"Model {like.name!r} is not compiled: compile it before refitting.")
    # What `compile_from_config` does, which Keras skips (with a warning) for
    # models that override `compile` (e.g. `MultipleShooting`).
    model.compile(**keras.saving.deserialize_keras_object(config))


#: An automatic grid (`values=count`) spans 1.5 times the Laplace interval's
#: half-width on each side of the estimate, in the constant's raw
#: (unconstrained) space, and at most this much (a factor e^3, about 20, for
#: a positive constant; three `scale`s for an unconstrained one).
AUTO_GRID_MAX_RAW_SPAN = 3.0


def _automatic_grid(model, name, count, x, y, sample_weight, level):
    """`count` physical values around the estimate (see `AUTO_GRID_MAX_RAW_SPAN`)."""
    from keras_hybrid.diagnostics.laplace import constant_uncertainty

    result = constant_uncertainty(model, x, y, sample_weight=sample_weight, level=level)
    index = result.names.index(name)
    half = 1.5 * result.quantile * math.sqrt(max(float(result.raw_covariance[index, index]), 0.0))
    half = min(half, AUTO_GRID_MAX_RAW_SPAN) if math.isfinite(half) and half > 0 else AUTO_GRID_MAX_RAW_SPAN
    spec = _spec(model, name)
    raw = float(np.asarray(spec.to_raw(result.estimates[name])))
    lo, hi = spec.domain
    values = []
    for r in raw + np.linspace(-half, half, count):
        # Near a bound, float32 rounds the image of a raw value onto the
        # bound (or 0), which no constant can take: move it towards the
        # estimate until it is inside.
        for _ in range(60):
            value = float(keras.ops.convert_to_numpy(spec.to_physical(np.float32(r))))
            if lo < value < hi:
                values.append(value)
                break
            r = raw + (r - raw) / 2
    values = np.unique(values)
    if values.size < 2:
        raise ValueError(
            f"Constant {name!r} = {result.estimates[name]!r} is at a bound of its constraint to "
            f"float32 precision: no grid of {count} values fits beside it. Give `values` yourself."
        )
    return values


# A refit above the threshold whose statistic would still fall by more
# than this fraction of the threshold is warned about.
_UNCONVERGED_FALL = 0.25

# A grid value this close to the estimate is the estimate: the constant
# is stored in float32 (about 6e-8 apart), the grid in float64.
_SAME_VALUE_RTOL = 1e-6


def _projected_fall(epoch_losses, n):
    """How much `n log loss` would still fall over as many epochs again,
    at the rate of the last half of a refit's epochs: the least-squares
    slope of `log loss` there, counted only where it is clearly negative
    (more than 3 standard errors, so that minibatch noise around a
    converged loss counts as flat). 0 with fewer than 4 epochs to tell."""
    losses = np.asarray(epoch_losses, "float64")
    half = losses[len(losses) // 2:]
    if len(losses) < 4 or not np.all(np.isfinite(half)) or np.any(half <= 0):
        return 0.0
    steps, logs = np.arange(half.size, dtype="float64"), np.log(half)
    slope, intercept = np.polyfit(steps, logs, 1)
    spread = logs - (slope * steps + intercept)
    stderr = math.sqrt(float(spread @ spread) / max(half.size - 2, 1) / float(np.sum((steps - steps.mean()) ** 2)))
    if slope >= -3.0 * stderr:
        return 0.0
    return float(-slope * losses.size * n)


def profile_likelihood(model, name, values, x, y=None, *, epochs, sample_weight=None, level=0.95,
                       verbose=0, **fit_kwargs):
    """Profile likelihood of one constant: refit everything else with
    `name` held fixed at each of `values`.

    The refits run on a copy of `model` (the original is left untouched),
    warm-started from its fitted weights, with the model's own
    `train_step` (SAM included) and a fresh optimizer of the compiled
    configuration. The grid is walked outwards from the value closest to
    the estimate, each refit starting from the previous one. With the
    residual sum of squares `RSS(v)` after each refit over the `n`
    observed values,

    ```
    statistic(v) = n log(RSS(v) / RSS_min),   interval = {v : statistic(v) <= chi2_1(level)}
    ```

    (`RSS_min` is the smallest of the grid's and the free fit's). The
    free fit is the profile's point at the estimate. At each grid value
    the profile takes the better of the refit and the model's own fit with
    the constant moved there (the rest kept), which bounds the profile
    from above. A refit that ends well above it is warned about (the
    refits have not converged), and so is a refit whose loss was still
    falling clearly at its last epoch where the profile is above the
    threshold (`_projected_fall`). The interval is interpolated linearly;
    an end the profile never crosses is the end of the constant's domain
    (`-inf` / `inf`, `0` for a positive constant, a bound of a `(lo, hi)`
    constraint). A profile entirely below the threshold is "flat".

    Args:
        model: a fitted, compiled Keras model with `ScientificLayer`s.
        name: the constant to profile.
        values: 1-D grid of physical values (inside the constraint), or a
            number of values (at least 3) for a grid chosen from the
            Laplace interval: evenly spaced in the constant's raw
            (unconstrained) space, 1.5 times the interval's half-width on
            each side of the estimate (at most `AUTO_GRID_MAX_RAW_SPAN`),
            so that a profile close to the Laplace approximation crosses
            its threshold inside the grid. Next to a bound, a value that
            float32 would round onto the bound is moved towards the
            estimate (values that then coincide count once).
        x: inputs, or a finite `tf.data.Dataset` of `(x, y)` or
            `(x, y, sample_weight)` batches (read once into arrays, which
            every refit then takes; `y` and `sample_weight` are `None`).
        y: targets.
        epochs: training epochs per refit.
        sample_weight: optional weights (used in the refits and the RSS).
        level: confidence level. Defaults to `0.95`.
        verbose: passed to `fit`. Defaults to `0`.
        **fit_kwargs: more `fit` arguments (`batch_size`, ...).

    Returns:
        A `ProfileLikelihood` (`.values`, `.rss`, `.statistic`, `.interval`,
        `.flat`; `.plot()`).

    Example:

    ```python
    prof = kh.profile_likelihood(model, "w0", np.linspace(0.8, 1.2, 7), y0, traj, epochs=50)
    prof.interval   # (lo, hi)
    kh.profile_likelihood(model, "w0", 9, y0, traj, epochs=50)   # a grid of 9 chosen for you
    ```

    Reference:
        Venzon & Moolgavkar, "A method for computing profile-likelihood-
        based confidence intervals", Applied Statistics 37 (1988);
        Raue et al., Bioinformatics 25 (2009).
    """
    start_time = time.perf_counter()
    _check_is_model(model)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be an integer >= 0. Received: epochs={epochs!r}")
    count = None
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        count = int(values)
        if count < 3:
            raise ValueError(f"`values` as a count must be at least 3. Received: values={values!r}")
    else:
        values = np.asarray(values, "float64").ravel()
        if values.size < 2 or not np.all(np.isfinite(values)):
            raise ValueError(
                "`values` must be at least 2 numbers, all finite. "
                f"Received: values={values.tolist()!r}"
            )
    threshold = un.chi2_1_quantile(level)
    _owner_layer(model, name)
    x, y, sample_weight = arrays_from_dataset(x, y, sample_weight)
    x, y = _checked_data(model, x, y)
    if count is not None:
        values = _automatic_grid(model, name, count, x, y, sample_weight, level)
    estimate = model_constants = None
    from keras_hybrid.layers import physical_constants

    model_constants = physical_constants(model)
    estimate = model_constants[name]
    clone = clone_for_refit(model)
    layer, local = _owner_layer_in_copy(model, clone, name)
    layer.set_constant_trainable(local, False)
    fresh_compile(clone, model)
    base = clone.get_weights()

    def rss_of(m):
        res = _Residuals(m, [], x, y, sample_weight, None)
        return res.rss(), res.n

    rss_free, n = rss_of(model)
    un.require_residuals(rss_free, n)  # before any refit
    order = np.argsort(np.abs(values - estimate))
    first = int(order[0])
    rss = np.full(values.size, np.nan)
    losses = np.full(values.size, np.nan)
    still_falling = np.zeros(values.size)
    sorted_idx = np.argsort(values)
    pos = int(np.where(sorted_idx == first)[0][0])
    walks = [sorted_idx[pos:], sorted_idx[:pos][::-1]]
    # The model's fit with the constant moved to each value, the rest
    # kept: the profile (a minimum over the rest) is at or below it.
    plugged = np.full(values.size, np.nan)
    for i in range(values.size):
        clone.set_weights(base)
        layer.set_constant(local, float(values[i]))
        plugged[i], _ = rss_of(clone)
    with quiet_retracing():
        for walk in walks:
            clone.set_weights(base)
            for i in walk:
                layer.set_constant(local, float(values[i]))
                # (Nothing left to refit when the constant was the only trainable weight.)
                if epochs and clone.trainable_variables:
                    hist = clone.fit(x, y, sample_weight=sample_weight, epochs=epochs,
                                     verbose=verbose, **fit_kwargs)
                    losses[i] = hist.history["loss"][-1]
                    still_falling[i] = _projected_fall(hist.history["loss"], n)
                rss[i], _ = rss_of(clone)
    # The free fit is the profile's point at the estimate: with it, an
    # interval narrower than the grid's spacing is still bracketed. A grid
    # value equal to the estimate (to float32 precision, where the
    # constant is stored) has two fits there, the refit and the model's
    # own: the profile takes the better one.
    at_estimate = np.isclose(values, estimate, rtol=_SAME_VALUE_RTOL, atol=0.0)
    # The model's fit with the constant moved there bounds the profile from above.
    best_rss = np.fmin(rss, plugged)
    if np.any(at_estimate):
        points, point_rss = values, np.where(at_estimate, np.fmin(best_rss, rss_free), best_rss)
    else:
        points, point_rss = np.append(values, estimate), np.append(best_rss, rss_free)
    lo, hi, point_stat = un.profile_interval(points, point_rss, n, rss_min=rss_free, level=level)
    # An end the profile never crosses is the end of the constant's domain.
    domain_lo, domain_hi = _spec(model, name).domain
    lo, hi = max(lo, domain_lo), min(hi, domain_hi)

    # Refits that ended well above the fit they could have kept: not converged.
    above_start = np.flatnonzero(~at_estimate & (rss > 0) & (plugged > 0)
                                 & (n * np.log(np.fmax(rss, 1e-300) / np.fmax(plugged, 1e-300)) > threshold))
    unreturned = None
    if np.any(at_estimate):
        i = int(np.flatnonzero(at_estimate)[0])
        if rss[i] > 0 and rss_free > 0 and n * np.log(rss[i] / rss_free) > threshold:
            unreturned = (float(values[i]), float(rss[i]))
    rss_min = min(rss_free, float(np.nanmin(best_rss)))
    # Each row's statistic is its own refit's (the interval may have taken
    # the model's fit in place of a worse refit at the estimate).
    stat = n * np.log(rss / rss_min)
    order = np.argsort(values)
    estimate_statistic = float(n * np.log(rss_free / rss_min)) if rss_min > 0 else 0.0
    warnings = []
    if estimate_statistic > threshold:
        best = int(np.nanargmin(best_rss))
        how = "the refit" if not rss[best] > best_rss[best] else "the model itself (not refitted)"
        warnings.append(
            f"the model is not at the minimum of these data's loss: {how} with {name} = "
            f"{float(values[best]):.5g} reaches RSS {rss_min:.5g} against the model's {rss_free:.5g} "
            f"(n log ratio {estimate_statistic:.3g} > {threshold:.3g}), so the interval need "
            f"not contain the estimate {estimate:.5g}. Was the model fitted on other data (a "
            "training split) or stopped early? Refit it on these data first."
        )
        _warnings.warn(f"profile_likelihood({name!r}): {warnings[-1]}", stacklevel=2)
    if unreturned is not None:
        value, refit_rss = unreturned
        warnings.append(
            f"the refit with {name} held at its estimate {value:.5g} ended at RSS "
            f"{refit_rss:.5g}, above the model's own {rss_free:.5g} (n log ratio "
            f"{n * np.log(refit_rss / rss_free):.3g} > {threshold:.3g}): the refits do not get "
            "back to the fit they start from, so the other values' RSS are too high and the "
            "interval too narrow. Give more `epochs`, or a smaller learning rate (a fresh "
            "optimizer's first steps can throw a fitted model off)."
        )
        _warnings.warn(f"profile_likelihood({name!r}): {warnings[-1]}", stacklevel=2)
    # Refits still improving where the profile is above the threshold: their
    # statistic is too high, the interval too narrow.
    unconverged = np.flatnonzero((stat > threshold) & (still_falling > _UNCONVERGED_FALL * threshold))
    if unconverged.size:
        shown = ", ".join(f"{values[i]:.5g} (statistic {stat[i]:.3g}, falling by about "
                          f"{still_falling[i]:.2g})" for i in unconverged[:3])
        warnings.append(
            f"the refits were still improving at their last epoch: at {name} = {shown} over "
            "as many epochs again, at the rate of their second half. These statistics are "
            "too high and the interval may be too narrow. Give more `epochs`."
        )
        _warnings.warn(f"profile_likelihood({name!r}): {warnings[-1]}", stacklevel=2)
    if above_start.size:
        shown = ", ".join(f"{values[i]:.5g} (RSS {rss[i]:.5g} against {plugged[i]:.5g})"
                          for i in above_start[:3])
        warnings.append(
            f"the refits at {name} = {shown} ended above the model's own fit with {name} moved "
            "there and the rest kept, which the profile (a minimum over the rest) cannot exceed: "
            "they have not converged. The interval takes the better of the two at each value. "
            "Give more `epochs`, or a smaller learning rate (a fresh optimizer's first steps "
            "can throw a fitted model off)."
        )
        _warnings.warn(f"profile_likelihood({name!r}): {warnings[-1]}", stacklevel=2)
    gaps = un.profile_gaps(points, point_stat, threshold)
    if gaps:
        warnings.append(
            f"the profile rises above the threshold at {name} = "
            f"{', '.join(f'{g:.5g}' for g in gaps)} between values below it: the set of "
            f"accepted values is not one interval, and ({lo:.5g}, {hi:.5g}) spans all of it. "
            "A refit that has not converged (more `epochs`) or a second minimum of the fit; "
            "a finer grid there tells which."
        )
        _warnings.warn(f"profile_likelihood({name!r}): {warnings[-1]}", stacklevel=2)
    return ProfileLikelihood(
        name=name,
        unit=_spec(model, name).unit,
        values=values[order],
        rss=rss[order],
        loss=losses[order],
        statistic=stat[order],
        interval=(lo, hi),
        threshold=threshold,
        flat=bool(np.nanmax(n * np.log(best_rss / rss_min)) <= threshold),
        estimate=estimate,
        rss_min=rss_min,
        rss_estimate=rss_free,
        estimate_statistic=estimate_statistic,
        warnings=warnings,
        n=n,
        level=float(level),
        seconds=time.perf_counter() - start_time,
    )
