"""`report`: the marginal and network-fixed intervals, the verdicts and any
profiles of a fitted model, printed and optionally plotted.
"""

from keras_hybrid._plotting import pyplot
from keras_hybrid._dataset_input import arrays_from_dataset
from keras_hybrid.diagnostics.laplace import constant_uncertainty
from keras_hybrid.diagnostics.residuals import _check_is_model, _network_variables
from keras_hybrid.diagnostics.results import _significant_digits
from keras_hybrid.layers import _keyed_constant_variables


def report(model, x, y=None, *, profiles=None, truth=None, plot=None, **kwargs):
    """Prints the whole picture: the marginal intervals and verdicts, the
    network-fixed intervals for comparison, and any profiles; optionally
    saves a figure (interval bars and profile curves) to `plot`.

    Args:
        model: a fitted model.
        x: inputs, or a finite `tf.data.Dataset` (as for
            `constant_uncertainty`).
        y: targets.
        profiles: optional list of `ProfileLikelihood`.
        truth: optional `name -> value` of constants of the model
            (simulations), marked in the plot and reported as covered or
            not (constants that are not estimated, i.e. frozen, have no
            interval to cover them).
        plot: optional path of a PNG to write (needs matplotlib).
        **kwargs: passed to `constant_uncertainty`.

    Returns:
        The marginal `ConstantUncertainty`.
    """
    if plot:
        pyplot()  # an optional dependency: missing, say so before computing anything
    if truth:
        _check_is_model(model)
        specs = {key: spec for key, _, spec in _keyed_constant_variables(model)}
        unknown = [k for k in truth if k not in specs]
        if unknown:
            raise ValueError(
                f"`truth` names {', '.join(map(repr, unknown))}, not a constant of the model "
                f"(its constants: {', '.join(specs)}). Received: truth={truth!r}")
    # A dataset is read once, so that both reports see the same samples.
    x, y, sample_weight = arrays_from_dataset(x, y, kwargs.pop("sample_weight", None))
    if sample_weight is not None:
        kwargs["sample_weight"] = sample_weight
    marginal = constant_uncertainty(model, x, y, profiles=profiles, **kwargs)
    print(marginal)
    fixed_kwargs = {k: v for k, v in kwargs.items() if k not in ("network", "prior_precision")}
    fixed = constant_uncertainty(model, x, y, network="fixed", **fixed_kwargs)
    if fixed.names and _network_variables(model):
        print("Network held fixed (overconfident):")
        for k in fixed.names:
            lo, hi = fixed.intervals[k]
            unit = f" {fixed.units[k]}" if fixed.units.get(k) else ""
            # Enough digits to tell the interval's ends apart.
            fmt = f".{_significant_digits(fixed.estimates[k], hi - lo)}g"
            print(f"  {k} = {fixed.estimates[k]:{fmt}}  [{lo:{fmt}}, {hi:{fmt}}]{unit}")
    for prof in profiles or []:
        print(prof)
    if truth:
        covered = marginal.covers({k: v for k, v in truth.items() if k in marginal.names})
        for k, value in truth.items():
            unit = f" {specs[k].unit}" if specs[k].unit else ""
            if k not in covered:
                print(f"  truth {k} = {value:.5g}{unit}: not estimated (frozen), no interval")
                continue
            lo, hi = marginal.intervals[k]
            fmt = f".{_significant_digits(value, hi - lo)}g"
            print(f"  truth {k} = {value:{fmt}}{unit} is {'inside' if covered[k] else 'outside'} "
                  "the interval")
    if plot:
        plt = pyplot()
        count = 1 + len(profiles or [])
        fig, axes = plt.subplots(1, count, figsize=(5 * count, 3.5), squeeze=False)
        marginal.plot(axes[0, 0], truth=truth)
        for ax, prof in zip(axes[0, 1:], profiles or []):
            prof.plot(ax, truth=(truth or {}).get(prof.name))
        fig.tight_layout()
        fig.savefig(plot, dpi=90)
        plt.close(fig)
    return marginal
