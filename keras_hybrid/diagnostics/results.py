"""The result objects: `ConstantUncertainty` (estimates, intervals and
verdicts of the constants) and `ProfileLikelihood` (a constant's profile
and its likelihood-ratio interval).
"""

import math

import numpy as np

from keras_hybrid._plotting import labelled, percent, pyplot


def _plain(value):
    """`value` with NumPy arrays, scalars and tuples as JSON's lists and numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Serializable:
    """`to_dict` / `from_dict` over the result's `_FIELDS`."""

    _FIELDS = ()
    _PAIRS = ()  # dict fields of `name -> (lo, hi)`, tuples again when read back
    _ARRAYS = ()

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_dict(self):
        """The result as plain Python (JSON-serializable; `json.dump` writes
        infinite interval ends as `Infinity`)."""
        return {k: _plain(getattr(self, k)) for k in self._FIELDS if hasattr(self, k)}

    @classmethod
    def from_dict(cls, config):
        """The result from `to_dict()`'s output (printable and plottable;
        the solver's internals are not kept)."""
        fields = dict(config)
        for k in cls._PAIRS:
            if k in fields:
                fields[k] = {name: tuple(pair) for name, pair in fields[k].items()}
        for k in cls._ARRAYS:
            if fields.get(k) is not None:
                fields[k] = np.asarray(fields[k], "float64")
        if "interval" in fields:
            fields["interval"] = tuple(fields["interval"])
        return cls(**fields)


class ConstantUncertainty(_Serializable):
    """Result of `constant_uncertainty`.

    Attributes:
        names: constant names (keys of the dicts below).
        estimates: `name -> physical value`.
        stderr: `name -> standard error` (delta method, physical units).
        intervals: `name -> (lo, hi)` at `level` (end points mapped through
            the constraint, so they respect it; with `path`, widened by the
            selection range).
        statistical_intervals: `name -> (lo, hi)`, the Laplace part alone.
        selection_ranges: `name -> (lo, hi)`, the range over the eligible
            radii of `path` (empty without `path`).
        evidence: with the evidence prior, the fixed point (`alpha`, the
            precision of the weights in units of their layer's RMS;
            `gamma`, `noise_variance`,
            `weight_sq_norm` of those scaled weights, `layer_rms`,
            `iterations`, `converged`); else `None`.
        verdicts: `name -> "identified" | "weakly identified" | "not identified"`.
        notes: `name -> list of explanations` of the verdict.
        warnings: list of warning strings (e.g. an estimate at a bound).
        correlation: `(p, p)` correlation matrix of the raw constants, in
            the order of `names`.
        raw_covariance: `(p, p)` covariance of the raw constants.
        noise_std: residual standard deviation `s`.
        output_noise_std: `channel -> RMS residual` per output channel (the
            last axis of each output: `"y"` for one, `"y[1]"`, `"conc"`,
            ...); a warning says when they differ by more than a factor 2
            (`keras_hybrid.diagnostics.OUTPUT_SCALE_RATIO` in variance).
        n: number of observed values.
        exactly_reproduced: `channel -> number of values` the model
            reproduces exactly in every sample (e.g. the initial state an
            `ODELayer` returns as given), which are not observations of
            the noise and are left out of `n`.
        effective_parameters: parameters counted in `s^2 = RSS / (n - p)`.
        level, network, method, prior_precision, prior_source, units,
        seconds, solver: settings and bookkeeping.

    `to_dict()` / `ConstantUncertainty.from_dict(d)` save and restore
    everything above except the solver's internals (JSON-serializable).
    """

    _FIELDS = ("names", "estimates", "stderr", "intervals", "statistical_intervals",
               "selection_ranges", "verdicts", "notes", "warnings", "correlation",
               "raw_covariance", "noise_std", "output_noise_std", "noise_variance", "n",
               "exactly_reproduced", "effective_parameters", "level", "network", "method", "prior_precision",
               "prior_source", "units", "evidence", "seconds")
    _PAIRS = ("intervals", "statistical_intervals", "selection_ranges")
    _ARRAYS = ("correlation", "raw_covariance")

    def _reproduced_lines(self):
        dropped = getattr(self, "exactly_reproduced", None) or {}
        if not dropped:
            return []
        parts = ", ".join(f"{count} of {channel}" for channel, count in dropped.items())
        return [f"  ({parts}: values reproduced exactly in every sample, e.g. an initial state "
                "given as input, not counted in n)"]

    def __str__(self):
        pct = percent(self.level)
        lines = [
            f"Constants ({self.network} network, {self.method}; noise std {self.noise_std:.4g} "
            f"over n={self.n} values, {self.effective_parameters:.1f} effective parameters)",
            *self._reproduced_lines(),
        ]
        rows = []
        for name in self.names:
            lo, hi = self.intervals[name]
            # Enough digits to tell the interval's ends apart.
            fmt = f".{_significant_digits(self.estimates[name], hi - lo)}g"
            rows.append((name, format(self.estimates[name], fmt), format(self.stderr[name], ".3g"),
                         f"[{format(lo, fmt)}, {format(hi, fmt)}]", self.units.get(name, ""),
                         self.verdicts[name]))
        heads = ("constant", "estimate", "std. err.", pct + " interval", "unit", "verdict")
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
        widths[0], widths[1], widths[3] = max(widths[0], 12), max(widths[1], 11), max(widths[3], 25)
        for row in [heads] + rows:
            lines.append(f"{row[0]:<{widths[0]}} {row[1]:>{widths[1]}} {row[2]:>{widths[2]}} "
                         f"{row[3]:>{widths[3]}}  {row[4]:<{max(widths[4], 8)}} {row[5]}")
        for name in self.names:
            if name in self.selection_ranges:
                (slo, shi), (tlo, thi) = self.selection_ranges[name], self.statistical_intervals[name]
                lines.append(
                    f"  {name}: statistical [{tlo:.5g}, {thi:.5g}], over the eligible radii "
                    f"[{slo:.5g}, {shi:.5g}]"
                )
        for name in self.names:
            for note in self.notes[name]:
                if "relative interval width" not in note:
                    lines.append(f"  note: {note}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)

    __repr__ = __str__

    def covers(self, truth):
        """`name -> bool`: whether each interval contains `truth[name]`."""
        unknown = [k for k in truth if k not in self.intervals]
        if unknown:
            raise ValueError(
                f"`truth` names {', '.join(map(repr, unknown))}, which has no interval (the "
                f"estimated constants: {', '.join(self.names)}). Received: truth={truth!r}")
        return {k: self.intervals[k][0] <= v <= self.intervals[k][1] for k, v in truth.items()}

    def plot(self, ax=None, truth=None):
        """Interval bars per constant, relative to the estimate (divided by
        its absolute value; the value itself for an estimate of 0); needs
        matplotlib.

        Bar ends beyond 10 times the estimate (and infinite ones) are drawn
        at 10 with an arrow; a constant without an interval (NaN) is
        marked "no interval". Without `ax`, a new figure.

        Returns:
            The axes.
        """
        plt = pyplot()
        created = ax is None
        if created:
            _, ax = plt.subplots(figsize=(6.4, 1.2 + 0.6 * len(self.names)))
        for i, name in enumerate(self.names):
            est = self.estimates[name]
            lo, hi = self.intervals[name]
            scale = abs(est) or 1.0
            if math.isnan(lo) or math.isnan(hi):
                ax.annotate("no interval", (est / scale, i), textcoords="offset points",
                            xytext=(6, 4), color="tab:red")
            else:
                ends = [min(max(v / scale, -_PLOT_CLIP), _PLOT_CLIP) for v in (lo, hi)]
                color = {"identified": "tab:green", "weakly identified": "tab:orange"}.get(
                    self.verdicts[name], "tab:red")
                ax.plot(ends, [i, i], color=color, lw=3)
                for end, marker in zip(ends, "<>"):
                    if abs(end) == _PLOT_CLIP:  # clipped or infinite
                        ax.plot([end], [i], marker, color=color, ms=9)
            ax.plot([est / scale], [i], "ko")
            if truth and name in truth:
                ax.plot([truth[name] / scale], [i], "x", color="tab:blue", ms=10)
        ax.set_yticks(range(len(self.names)), [f"{n}\n{self.verdicts[n]}" for n in self.names])
        ax.set_xlabel("value / |estimate|")
        ax.set_title(f"{percent(self.level)} intervals ({self.network} network)")
        if created:
            ax.figure.tight_layout()  # the verdicts' labels inside the figure
        return ax


def _significant_digits(value, width):
    """Significant digits that show an interval of `width` around `value`
    as more than one number: at least 5, at most 15."""
    if not (math.isfinite(value) and math.isfinite(width)) or width <= 0 or value == 0:
        return 5
    return max(5, min(15, math.ceil(math.log10(abs(value) / width)) + 2))


# Interval ends drawn at most this many times the estimate away.
_PLOT_CLIP = 10.0


class ProfileLikelihood(_Serializable):
    """Result of `profile_likelihood`.

    Attributes:
        name: the profiled constant.
        unit: its unit (`""` for none).
        values: grid of fixed values (sorted).
        rss: residual sum of squares after the refit at each value.
        loss: the final training loss of each refit (`nan` where nothing
            was refitted: no epochs, or no other trainable weight).
        statistic: `n log(RSS / RSS_min)` per value.
        interval: `(lo, hi)` likelihood-ratio interval (the end of the
            constant's domain where the profile does not cross the
            threshold within the grid).
        threshold: `chi2_1(level)`.
        flat: True if the whole grid lies inside the interval.
        rss_estimate: the residual sum of squares of the model as given.
        estimate_statistic: `n log(rss_estimate / rss_min)`, the profile
            statistic of the estimate itself; 0 when the given fit is the
            best one found.
        warnings: list of strings, e.g. that the estimate lies outside
            its own interval because the given fit is not at the minimum
            of these data's loss.
        estimate, rss_min, n, level, seconds.

    `to_dict()` / `ProfileLikelihood.from_dict(d)` save and restore it
    (JSON-serializable).
    """

    _FIELDS = ("name", "unit", "values", "rss", "loss", "statistic", "interval", "threshold", "flat",
               "estimate", "rss_min", "rss_estimate", "estimate_statistic", "warnings", "n",
               "level", "seconds")
    _ARRAYS = ("values", "rss", "loss", "statistic")

    def __str__(self):
        lo, hi = self.interval
        # Enough digits to tell neighbouring grid values, and the interval's
        # ends, apart.
        values = np.asarray(self.values, "float64")
        steps = np.diff(np.sort(values))
        steps = steps[steps > 0]
        grid = _significant_digits(np.max(np.abs(values), initial=0.0),
                                   float(steps.min()) if steps.size else 0.0)
        fmt = f".{_significant_digits(self.estimate, hi - lo)}g"
        rows = "\n".join(
            f"  {self.name} = {v:<10.{grid}g} RSS = {r:.5g}   n log(RSS/RSS_min) = {s:.3g}"
            for v, r, s in zip(values, self.rss, self.statistic)
        )
        return (
            f"Profile of {self.name} (threshold {self.threshold:.3g} at {percent(self.level)}):\n{rows}\n"
            f"  interval [{lo:{fmt}}, {hi:{fmt}}]" + (f" {self.unit}" if getattr(self, "unit", "") else "")
            + ("  (flat profile)" if self.flat else "")
            + "".join(f"\n  warning: {w}" for w in getattr(self, "warnings", []))
        )

    __repr__ = __str__

    def plot(self, ax=None, truth=None):
        """The profile statistic against the fixed value; needs matplotlib.
        Without `ax`, a new figure. Returns the axes."""
        plt = pyplot()
        if ax is None:
            _, ax = plt.subplots()
        ax.plot(self.values, self.statistic, "o-", label=f"profile of {self.name}")
        ax.axhline(self.threshold, color="grey", ls="--", label=f"{percent(self.level)} threshold")
        ax.axvline(self.estimate, color="k", lw=0.8, label="estimate")
        if truth is not None:
            ax.axvline(truth, color="tab:blue", ls=":", label="truth")
        ax.set_xlabel(labelled(self.name, getattr(self, "unit", "")))
        ax.set_ylabel("n log(RSS / RSS_min)")
        ax.legend()
        return ax
