"""matplotlib, imported where a plot is asked for (an optional
dependency), and the labels that plots and printed results share."""


def pyplot():
    """`matplotlib.pyplot`, or an `ImportError` that says how to get it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "Plotting needs matplotlib, an optional dependency of keras_hybrid: "
            "`pip install matplotlib` (or `pip install 'keras-hybrid[tutorials]'`)."
        ) from None
    return plt


def labelled(name, unit):
    """`name [unit]`, or `name` alone for a constant without a unit."""
    return f"{name} [{unit}]" if unit else name


def percent(fraction):
    """`fraction` in percent, without rounding away its digits: `0.95` ->
    `"95%"`, `0.999` -> `"99.9%"`, `0.004` -> `"0.4%"`."""
    return f"{100 * fraction:.10g}%"
