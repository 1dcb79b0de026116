"""A model's trajectories at other times than it was built for: forecasts
beyond the training horizon, or a finer grid for plots."""

import keras

from keras_hybrid.layers import ODELayer


def _ode_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, ODELayer)]


def with_times(model, times, **layer_kwargs):
    """A copy of `model` whose `ODELayer`s return trajectories at `times`.

    The `ODELayer`s are replaced by `layer.with_times(times, **layer_kwargs)`
    (copies carrying their current constants and correction weights); every
    other layer is shared with `model`, so an encoder or a decoder is the
    trained one. Predict with it as with `model`; train `model`, not the
    copy (the copy's constants do not follow later training: make a new
    copy). The copies keep the layers' names, so their constants keep
    their keys in `kh.physical_constants`, and a `HybridModel`'s copy keeps
    its `sam` and `on_non_finite` settings.

    The `ODELayer`s must be layers of `model` (or of a model nested in
    it): one held inside another layer cannot be replaced, and is refused.
    Each is copied from its config, so a correction network of your own
    class must be registered (`@keras.saving.register_keras_serializable()`),
    as for saving.

    Args:
        model: a functional or `Sequential` model (`HybridModel`
            included), or a `SAMModel` around one, holding at least one
            `ODELayer`.
        times: 1-D increasing time points for every `ODELayer`
            (`times[0]` is the time of the initial state).
        **layer_kwargs: other `ODELayer` arguments to change, e.g.
            `max_step=0.05` when the new times have long gaps.

    Returns:
        The new model (of `model`'s class for a functional model; the
        wrapped model's copy for a `SAMModel`).

    Example:

    ```python
    model.fit(y0, trajectories_0_to_10s, epochs=600)
    forecast = kh.with_times(model, np.linspace(0.0, 30.0, 601))
    forecast.predict(y0)   # 30 s, three times the training horizon
    ```
    """
    from keras_hybrid.models import SAMModel
    from keras_hybrid.shooting import MultipleShooting

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model. Received: model={model!r}")
    if isinstance(model, SAMModel):
        return with_times(model.model, times, **layer_kwargs)
    if isinstance(model, MultipleShooting):
        raise TypeError(
            f"`with_times` copies functional and Sequential models, not a MultipleShooting "
            f"({model.name!r}), which predicts from observed trajectories. Integrate its "
            "layer from the first states instead: "
            "`model.layer.with_times(times)(trajectories[:, 0])`."
        )
    layers = _ode_layers(model)
    if not layers:
        raise ValueError(f"`model` holds no ODELayer. Received: model={model.name!r}")
    # The arguments are checked on one layer first, so that their errors
    # are not taken for a model that cannot be copied (below).
    layers[0].with_times(times, **layer_kwargs)

    def clone(layer):
        if isinstance(layer, ODELayer):
            # The original's name: the copy's constants keep their keys.
            return layer.with_times(times, **{"name": layer.name, **layer_kwargs})
        if isinstance(layer, keras.Model) and _ode_layers(layer):
            return with_times(layer, times, **layer_kwargs)  # a nested model
        # (`clone_model` passes operations too, e.g. a slice `x[:, 0]`.)
        held = _ode_layers(layer) if isinstance(layer, keras.layers.Layer) else []
        if held:
            # Shared, it would forecast at its old times, silently.
            raise TypeError(
                f"`with_times` replaces the ODELayers that are layers of the model (or of a "
                f"model nested in it); layer {layer.name!r} ({type(layer).__name__}) holds "
                f"ODELayer {held[0].name!r} inside itself, where it cannot be replaced. Make "
                "the ODELayer a layer of the model, or give your layer a `with_times` of its "
                "own. Received: model={model.name!r}"
            )
        return layer  # shared: the trained encoder, decoder, ...

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except ValueError as error:
        raise TypeError(
            f"`with_times` copies functional and Sequential models; model {model.name!r} "
            f"({type(model).__name__}) could not be copied ({error}). Integrate its "
            "`ODELayer` at other times instead: `layer.with_times(times)(initial_states)`."
        ) from error
    # `clone_model` builds a `HybridModel` with the default training step.
    for setting in ("sam", "on_non_finite"):
        if hasattr(model, setting):
            setattr(copy, setting, getattr(model, setting))
    return copy
