"""Shape checks that turn silent broadcasts into errors naming the cause.

Tensors of shapes `(N, 2)` and `(N, 1)`, or `(N, n)` and `(N,)` with
`N == n`, broadcast without complaint: a loss, a Runge-Kutta update or a
sum of physics and correction then computes something other than what was
meant. These checks run on static shapes, while a function is traced, so
they cost nothing per step.
"""

import keras


def shape_of(tensor):
    """Static shape as a tuple (`None` for unknown dimensions), or `None`
    when even the rank is unknown (a function traced again for inputs of
    another rank: TensorFlow then relaxes the shapes entirely)."""
    shape = getattr(tensor, "shape", ())
    if getattr(shape, "rank", 0) is None:
        return None
    return tuple(shape)


def same_shape(a, b):
    """True if shapes `a` and `b` have the same rank and every dimension
    known in both agrees (and True when either rank is unknown: nothing to
    compare)."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def function_name(fn):
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class UnknownConstantError(KeyError):
    """An equation read a constant that its layer does not have."""

    def __str__(self):  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class ConstantValues(dict):
    """The `constants` dict given to an equation; a missing name raises an
    error naming the equation, the layer and the names that exist."""

    def __init__(self, values, layer, equation):
        super().__init__(values)
        self._where = (layer, equation)

    def __missing__(self, name):
        layer, equation = self._where
        raise UnknownConstantError(
            f"The equation `{function_name(equation)}` of layer '{layer.name}' reads the "
            f"constant {name!r}, which the layer does not have. Its constants are "
            f"{sorted(self)}. Add `PhysicalConstant({name!r}, ...)` to the layer's "
            "`constants`, or fix the name in the equation."
        )


def check_not_ragged(layer, inputs):
    """Equations work on dense tensors; a ragged batch would reach them as
    a `tf.RaggedTensor` and fail (or broadcast) far from the cause."""
    for i, tensor in enumerate(inputs):
        if type(tensor).__name__ in ("RaggedTensor", "SparseTensor"):
            raise ValueError(
                f"Layer '{layer.name}' (equation `{function_name(layer.equation)}`) needs "
                f"dense inputs of equal length per sample. Received: input {i} is a "
                f"{type(tensor).__name__} with shape {shape_of(tensor)}. Pad the samples "
                "to one length (e.g. `x.to_tensor()`), or split the data by length."
            )


def check_state_shaped(layer, what, y, term, received="shape"):
    """`term` (dy/dt, or a correction of it) must have exactly the state's
    shape: `(batch,)` or `(batch, 1)` would broadcast against `(batch, n)`
    in the solver's update `y + dt * term`."""
    if not same_shape(shape_of(term), shape_of(y)):
        raise ValueError(
            f"{what} of ODELayer '{layer.name}' must return dy/dt with the shape of the "
            f"state {shape_of(y)}. Received: {received} with shape {shape_of(term)}"
        )


def check_correction_builds_state_shaped(layer, state_shape, features_shape):
    """At build time, when the correction can tell its output shape."""
    try:
        out = layer.correction.compute_output_shape(features_shape)
    except Exception:  # noqa: BLE001 - layers without shape inference: checked at call
        return
    if isinstance(out, (tuple, list)) and all(d is None or isinstance(d, int) for d in out):
        check_state_shaped(
            layer, f"The correction '{layer.correction.name}'", _Shaped(state_shape),
            _Shaped(out), "a correction",
        )


class _Shaped:
    def __init__(self, shape):
        self.shape = tuple(shape)


# Losses that compare `y` and `y_pred` element by element, so that a shape
# mismatch broadcasts silently (names as Keras spells them, normalized).
_ELEMENTWISE_LOSSES = {
    "mse", "mae", "mape", "msle", "meansquarederror", "meanabsoluteerror",
    "meanabsolutepercentageerror", "meansquaredlogarithmicerror", "huber",
    "logcosh", "poisson", "binarycrossentropy", "categoricalcrossentropy",
}


def _loss_label(loss):
    return str(loss if isinstance(loss, str) else getattr(loss, "name", None) or getattr(loss, "__name__", ""))


def _loss_name(loss):
    return _loss_label(loss).replace("_", "").lower()


def _output_names(model):
    inner = model
    while not getattr(inner, "outputs", None) and isinstance(getattr(inner, "model", None), keras.Model):
        inner = inner.model  # SAMModel around a functional model
    return list(getattr(inner, "output_names", None) or []), inner


def outputs_keyed_like(model, y, y_pred):
    """`y_pred` in the structure of `y` where Keras pairs them by name: for
    targets given as a dict and outputs as a list, the outputs keyed by
    `model.output_names` (flattening both would pair them in sorted-key
    order against list order). Otherwise `y_pred` as it is."""
    if isinstance(y, dict) and isinstance(y_pred, (list, tuple)):
        names, _ = _output_names(model)
        if len(names) == len(y_pred) and set(names) == set(y):
            return dict(zip(names, y_pred))
    return y_pred


def _describe_output(model, index):
    names, inner = _output_names(model)
    if index >= len(names):
        return f"Output {index} of model '{model.name}'"
    try:
        layer = inner.get_layer(names[index])
    except ValueError:
        layer = None
    equation = getattr(layer, "equation", None)
    detail = f" (equation `{function_name(equation)}`)" if equation is not None else ""
    return f"Output {index} of model '{model.name}', from layer '{names[index]}'{detail},"


def _squeezable(a, b):
    # Keras drops or adds one trailing unit axis before an elementwise loss.
    long, short = (a, b) if len(a) > len(b) else (b, a)
    return len(long) == len(short) + 1 and long[-1] == 1 and same_shape(long[:-1], short)


def check_loss_shapes(model, y, y_pred):
    """Raises if targets and predictions differ in shape for an elementwise
    loss (`"mse"`, `"mae"`, ...), which would broadcast them."""
    if y is None:
        return
    losses = getattr(model, "loss", None)
    keyed = outputs_keyed_like(model, y, y_pred)
    if keyed is not y_pred:  # targets keyed by output name: in the outputs' order
        y = [y[name] for name in keyed]
    targets, predictions = keras.tree.flatten(y), keras.tree.flatten(y_pred)
    if len(targets) != len(predictions):
        return
    if isinstance(losses, (list, tuple)) and len(losses) == len(predictions):
        per_output = list(losses)
    elif isinstance(losses, (str, keras.losses.Loss)) or callable(losses):
        per_output = [losses] * len(predictions)
    else:
        return  # a dict of losses, or no compiled loss: nothing to compare
    for i, (target, prediction, loss) in enumerate(zip(targets, predictions, per_output)):
        a, b = shape_of(target), shape_of(prediction)
        if _loss_name(loss) not in _ELEMENTWISE_LOSSES or same_shape(a, b) or _squeezable(a, b):
            continue
        raise ValueError(
            f"{_describe_output(model, i)} has shape {b}, but the targets `y` have shape "
            f"{a}: the loss {_loss_label(loss)!r} would broadcast them into a wrong "
            "objective. Make the output the shape of the targets (e.g. the equation's "
            "last dimension), or reshape `y`."
        )


def per_sample_values(constants=None, context=None, **others):
    """`label -> value` of what is given per sample, for
    `check_per_sample_batch`."""
    given = {f"constants[{name!r}]": value for name, value in sorted((constants or {}).items())}
    given.update({k: v for k, v in dict(context=context, **others).items() if v is not None})
    return given


def check_per_sample_batch(layer, what, batch, given, broadcast=True):
    """Constants given per sample (`(batch,)`) and a context (`(batch, c)`)
    must have one row per sample of `what`; otherwise they fail deep in
    the solver with "Incompatible shapes". Scalars pass, and so does one
    row when `broadcast` (it broadcasts over the batch).

    Args:
        given: `label -> value`, e.g. from `per_sample_values`.
    """
    if batch is None:
        return
    for label, value in given.items():
        shape = shape_of(value)
        if shape and shape[0] not in (None, batch) and not (broadcast and shape[0] == 1):
            raise ValueError(
                f"Layer '{layer.name}' got {batch} samples in {what} but {shape[0]} rows in "
                f"{label}: per-sample values need one row per sample. Received: {label} "
                f"with shape {shape}"
            )
