"""A table of the physical constants of a model."""

import keras

from keras_hybrid.layers import _keyed_constant_variables

_COLUMNS = ("name", "value", "unit", "constraint", "trainable", "variable")


def _constraint_text(spec):
    if spec.constraint is None:
        return "none"
    if spec.constraint == "positive":
        return "positive"
    lo, hi = spec.constraint
    return f"({lo:.6g}, {hi:.6g})"


def constants_table(model):
    """Rows of `summary`: one dict per physical constant of `model`.

    Args:
        model: any Keras model or layer holding `ScientificLayer`s.

    Returns:
        List of dicts with keys `name`, `value` (float, physical units),
        `unit`, `constraint` (text), `trainable` (bool) and `variable` (the
        raw variable's path), in the order of `model.weights`.
    """
    rows = []
    for key, variable, spec in _keyed_constant_variables(model):
        value = float(keras.ops.convert_to_numpy(spec.to_physical(variable.value)))
        rows.append(
            {
                "name": key,
                "value": value,
                "unit": spec.unit,
                "constraint": _constraint_text(spec),
                "trainable": bool(variable.trainable),
                "variable": variable.path,
            }
        )
    return rows


def summary(model, print_fn=None):
    """Prints the physical constants of a model as a table.

    One row per constant: its name, current physical value, unit,
    constraint, whether it is trained, and the path of its raw variable.
    `model.summary()` shows the layers; this shows the physics.

    Args:
        model: any Keras model or layer holding `ScientificLayer`s.
        print_fn: function called with each line. Defaults to `print`.

    Example:

    ```python
    import keras
    import keras_hybrid as kh

    def ohm(current, c):
        return c["R"] * current

    inputs = keras.Input((1,))
    law = kh.ScientificLayer(
        ohm, [kh.PhysicalConstant("R", 10.0, unit="ohm", constraint="positive")], name="ohm"
    )
    kh.summary(keras.Model(inputs, law(inputs), name="circuit"))
    # Physical constants of 'circuit'
    # name  value  unit  constraint  trainable  variable
    # R     10     ohm   positive    True       ohm/R
    ```
    """
    print_fn = print if print_fn is None else print_fn
    rows = constants_table(model)
    if not rows:
        print_fn(f"Model '{model.name}' has no physical constants.")
        return
    cells = [
        [r["name"], f"{r['value']:.6g}", r["unit"] or "-", r["constraint"], str(r["trainable"]),
         r["variable"]]
        for r in rows
    ]
    widths = [max(len(c) for c in column) for column in zip(_COLUMNS, *cells)]
    print_fn(f"Physical constants of '{model.name}'")
    for line in [list(_COLUMNS)] + cells:
        print_fn("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
