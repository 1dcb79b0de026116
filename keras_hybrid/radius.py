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


RULES = ("paired", "relative")


def _one_sided_p(statistic, dof):
    """`P(T > statistic)` for Student's t with `dof` degrees of freedom
    (the standard normal for `dof = inf`)."""
    if math.isnan(statistic):
        return math.nan
    if math.isinf(statistic):
        return 0.0 if statistic > 0 else 1.0
    if not math.isfinite(dof):
        return 0.5 * math.erfc(statistic / math.sqrt(2.0))
    from keras_hybrid.uncertainty import _betainc

    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + statistic * statistic))
    return tail if statistic > 0 else 1.0 - tail


def paired_t_test(losses, best_losses, margin=0.0):
    """One-sided paired t test: is `losses` larger than `best_losses` by
    more than `margin`?

    The per-sample differences `d_i = losses_i - best_losses_i` (the same
    validation samples scored by two models) are tested against the null
    hypothesis `E[d] <= margin`:

    ```
    t = (mean(d) - margin) / (std(d, ddof=1) / sqrt(n)),   p = P(T_{n-1} > t)
    ```

    Pairing removes what the two models share (a hard validation sample is
    hard for both), so the test sees differences far smaller than the
    standard error of either loss.

    Args:
        losses: per-sample losses of one model, shape `(n,)`, `n >= 2`.
        best_losses: per-sample losses of the reference model on the same
            samples, shape `(n,)`.
        margin: the difference that does not count as worse, >= 0.
            Defaults to `0.0`.

    Returns:
        `(t, p)`: the statistic and its one-sided p-value (`t = inf`,
        `p = 0` when all differences are equal and above `margin`).

    Example:

    >>> t, p = paired_t_test([1.2, 2.1, 3.3], [1.0, 2.0, 3.0])
    >>> round(t, 3), round(p, 4)
    (3.464, 0.0371)
    """
    margin = _check_number("margin", margin, minimum=0.0)
    a = np.asarray(losses, "float64").reshape(-1)
    b = np.asarray(best_losses, "float64").reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(
            "`losses` and `best_losses` must be per-sample losses of the same samples, at least "
            f"two. Received: len(losses)={a.size}, len(best_losses)={b.size}"
        )
    d = a - b
    excess = float(np.mean(d)) - margin
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        t = math.inf if excess > 0 else (-math.inf if excess < 0 else 0.0)
        return t, (0.0 if excess > 0 else 1.0)
    t = excess / (sd / math.sqrt(d.size))
    return t, _one_sided_p(t, d.size - 1)


def radius_p_values(rhos, val_losses, per_sample_losses=None, standard_errors=None,
                    reference_loss=None, margin=0.0):
    """One-sided p-values of "radius r fits the validation data worse than
    the best radius" (the test behind `choose_radius(rule="paired")`).

    With per-sample validation losses, a paired t test of each radius
    against the radius of lowest mean validation loss (`paired_t_test`).
    With only the standard error of each mean loss, the unpaired normal
    approximation `z = (L_r - L_best - m) / sqrt(se_r^2 + se_best^2)`,
    which is conservative (rejects less) when the per-sample losses of the
    two radii are positively correlated, as they are on shared samples.
    `m` is `margin` times the gap between the physics part alone and the
    best radius (`reference_loss - L_best`; zero without a reference).

    Args:
        rhos: sequence of radii.
        val_losses: mean validation loss of each radius.
        per_sample_losses: per radius, the per-sample validation losses
            (all over the same samples), or `None`. Defaults to `None`.
        standard_errors: per radius, the standard error of its mean
            validation loss, or `None`. Defaults to `None`.
        reference_loss: validation loss of the physics part alone, or
            `None`. Defaults to `None`.
        margin: fraction of the improvement of the best radius over the
            physics part alone that a radius may give up before it counts
            as worse, in [0, 1). Defaults to `0.0`.

    Returns:
        `(p_values, method)`: a list (`1.0` for the best radius, `nan` for
        non-finite losses or missing information) and `"paired t"`,
        `"unpaired z"` or `None` (neither per-sample losses nor standard
        errors: no test is possible).
    """
    rhos, val_losses = list(rhos), [float(v) for v in val_losses]
    _check_lengths(rhos, val_losses, per_sample_losses=per_sample_losses,
                   standard_errors=standard_errors)
    margin = _check_number("margin", margin, minimum=0.0)
    if margin >= 1.0:
        raise ValueError(f"`margin` must be in [0, 1). Received: margin={margin!r}")
    finite = [i for i, v in enumerate(val_losses) if math.isfinite(v)]
    p = [math.nan] * len(rhos)
    if not finite:
        return p, None
    best = min(finite, key=lambda i: (val_losses[i], rhos[i]))
    delta = 0.0
    if reference_loss is not None and math.isfinite(reference_loss) and reference_loss > val_losses[best]:
        delta = margin * (reference_loss - val_losses[best])
    samples = None
    if per_sample_losses is not None and all(per_sample_losses[i] is not None for i in finite):
        samples = {i: np.asarray(per_sample_losses[i], "float64").reshape(-1) for i in finite}
        sizes = [samples[i].size for i in finite]
        if len(set(sizes)) != 1 or sizes[0] < 2:
            raise ValueError(
                "`per_sample_losses` must hold the losses of the same validation samples (at "
                f"least two) for every radius. Received: lengths {sizes}"
            )
        if not all(np.all(np.isfinite(s)) for s in samples.values()):
            samples = None
    ses = None
    if samples is None and standard_errors is not None and all(
            standard_errors[i] is not None and math.isfinite(standard_errors[i]) for i in finite):
        ses = [float(s) for s in standard_errors]
    if samples is None and ses is None:
        return p, None
    for i in finite:
        if i == best:
            p[i] = 1.0
        elif samples is not None:
            p[i] = paired_t_test(samples[i], samples[best], delta)[1]
        else:
            scale = math.hypot(ses[i], ses[best])
            excess = val_losses[i] - val_losses[best] - delta
            z = excess / scale if scale > 0 else (math.inf if excess > 0 else -math.inf)
            p[i] = _one_sided_p(z, math.inf)
    return p, ("paired t" if samples is not None else "unpaired z")


def holm_rejections(p_values, level):
    """Which hypotheses Holm's step-down procedure rejects at family-wise
    level `level`: sort the `m` finite p-values, reject the `k`-th
    smallest while `p_(k) <= level / (m - k + 1)`, stop at the first that
    is not. `nan` entries are never rejected and not counted.

    Example:

    >>> holm_rejections([0.01, 0.04, 0.03, 0.5], 0.05)
    [True, False, False, False]
    """
    level = _check_number("level", level, minimum=0.0)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1). Received: level={level!r}")
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    reject = [False] * len(p_values)
    m = len(order)
    for k, (p, i) in enumerate(order):
        if p > level / (m - k):
            break
        reject[i] = True
    return reject


def eligible_radii(rhos, val_losses, tolerance=0.25, reference_loss=None, standard_errors=None,
                   noise_level=2.0, *, rule="paired", per_sample_losses=None, level=0.05,
                   margin=0.0):
    """The radii that `choose_radius` may choose, and how they were found.

    See `choose_radius` for the rules and the arguments.

    Returns:
        A dict: `eligible` (the radii, increasing; the best radius alone
        when none passes), `best` (the radius of lowest validation loss),
        `rule` (the rule applied: `"paired"` or `"relative"`; `"paired"`
        falls back to `"relative"` when neither per-sample losses nor
        standard errors are given), `test` (`"paired t"`, `"unpaired z"`
        or `None`), `p_values` (per radius, `None` for the relative rule)
        and `limit` (the relative rule's largest accepted loss; for the
        paired rule the physics-only cap, or `inf`).
    """
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}. Received: rule={rule!r}")
    rhos, val_losses = list(rhos), [float(v) for v in val_losses]
    _check_lengths(rhos, val_losses, per_sample_losses=per_sample_losses,
                   standard_errors=standard_errors)
    level = _check_number("level", level, minimum=0.0)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1). Received: level={level!r}")
    finite = [(r, v) for r, v in zip(rhos, val_losses) if math.isfinite(v)]
    out = {"eligible": [], "best": None, "rule": rule, "test": None, "p_values": None,
           "limit": math.nan}
    p_values, test = None, None
    if rule == "paired":
        p_values, test = radius_p_values(rhos, val_losses, per_sample_losses, standard_errors,
                                         reference_loss, margin)
        if test is None:
            rule, p_values = "relative", None
    limit = selection_limit(rhos, val_losses, tolerance, reference_loss, standard_errors,
                            noise_level)
    if not finite:
        out["rule"] = rule
        return out
    best_rho = min(finite, key=lambda rv: (rv[1], rv[0]))[0]
    cap = math.inf
    if reference_loss is not None and math.isfinite(reference_loss):
        cap = float(reference_loss)
    if rule == "paired":
        # The best radius is the reference, not one of the hypotheses.
        rejected = holm_rejections(
            [math.nan if r == best_rho else q for r, q in zip(rhos, p_values)], level)
        eligible = [r for r, v, no in zip(rhos, val_losses, rejected)
                    if math.isfinite(v) and not no and v <= cap]
        limit = cap
    else:
        eligible = [r for r, v in finite if v <= limit]
    out.update(eligible=sorted(eligible) or [best_rho], best=best_rho, rule=rule, test=test,
               p_values=p_values, limit=limit)
    return out


def choose_radius(rhos, val_losses, tolerance=0.25, reference_loss=None,
                  standard_errors=None, noise_level=2.0, *, rule="paired",
                  per_sample_losses=None, level=0.05, margin=0.0):
    """The radius chosen from validation losses alone.

    The rule prefers the strongest regularization: the largest radius
    whose validation loss the data cannot tell from the best one. Two
    ways to decide "cannot tell":

    `rule="paired"` (the default): a radius is eligible unless it is
    significantly worse than the best radius, by a one-sided test of the
    difference of their validation losses, with Holm's correction over
    the radii (family-wise level `level`): a paired t test on per-sample
    losses (`per_sample_losses`, the same validation samples scored at
    every radius), else the unpaired normal approximation from
    `standard_errors` (conservative). The eligible set is then a
    confidence set for the best radius: with probability about
    `1 - level` no radius as good as the best is excluded. With many
    validation samples it narrows to the radii the data cannot separate;
    with few it stays wide. It is scale free: it depends on the losses
    only through the ratio of their differences to their noise. It also
    depends on how many radii are compared: each added radius makes
    Holm's thresholds stricter, so a finer grid can widen the set.

    ```
    d_i(r)   = loss_i(r) - loss_i(best)                 (per validation sample i)
    t(r)     = (mean d(r) - m) / (std d(r) / sqrt(n)),  p(r) = P(T_{n-1} > t(r))
    m        = margin * (L_ref - L_best)                (0 without a reference)
    eligible = {r : Holm at `level` does not reject r, and L_val(r) <= L_ref}
    chosen   = max(eligible)
    ```

    `margin` > 0 makes the test one of "worse by more than a fraction
    `margin` of what the network gains over the physics part alone"
    (`L_ref - L_best`): a radius that gives up less than that is never
    excluded. Every radius it admits also widens the constants'
    model-selection ranges (`RadiusPath.selection_ranges`).

    `rule="relative"` (the rule before the paired test, and the fallback
    of `"paired"` when neither per-sample losses nor standard errors are
    given): a relative slack `tolerance`, or `noise_level` standard
    errors of the best validation loss, whichever is larger:

    ```
    limit    = max((1 + tolerance) * best, best + noise_level * se_best)
    eligible = {r : L_val(r) <= limit  and  L_val(r) <= L_ref}
    ```

    Under both rules, when `reference_loss` (the physics part alone) is
    given, radii whose validation loss is worse than it are not eligible,
    unless no radius is as good, in which case the best radius is
    returned.

    Args:
        rhos: sequence of radii.
        val_losses: mean validation loss of each radius (non-finite
            losses are never chosen).
        tolerance: relative slack of the `"relative"` rule, >= 0.
            Defaults to `0.25`.
        reference_loss: validation loss of the physics part alone, or
            `None`. Defaults to `None`.
        standard_errors: standard error of each validation loss (the
            standard deviation of the per-sample losses over the square
            root of their number), or `None`. Defaults to `None`.
        noise_level: standard errors counted as noise by the `"relative"`
            rule. Defaults to `2.0`.
        rule: `"paired"` or `"relative"`. Defaults to `"paired"`.
        per_sample_losses: per radius, the validation loss of each
            validation sample (same samples, same order), or `None`.
            Defaults to `None`.
        level: family-wise significance level of the `"paired"` rule, in
            (0, 1). Defaults to `0.05`.
        margin: the `"paired"` rule's tolerated fraction of the gap
            between the physics part alone and the best radius, in
            [0, 1). Defaults to `0.0`.

    Returns:
        The chosen radius (an element of `rhos`), or `None` if no
        validation loss is finite.

    Example:

    >>> choose_radius([0.0, 0.1, 1.0], [1.0, 1.1, 2.0], rule="relative")
    0.1
    >>> choose_radius([0.0, 0.1], [1.0, 1.1],
    ...               per_sample_losses=[[0.9, 1.0, 1.1], [1.0, 1.1, 1.2]])
    0.0
    """
    result = eligible_radii(rhos, val_losses, tolerance, reference_loss, standard_errors,
                            noise_level, rule=rule, per_sample_losses=per_sample_losses,
                            level=level, margin=margin)
    return max(result["eligible"]) if result["eligible"] else None


def _check_lengths(rhos, val_losses, **per_radius):
    if len(rhos) != len(val_losses):
        raise ValueError(
            "`rhos` and `val_losses` must have the same length. Received: "
            f"len(rhos)={len(rhos)}, len(val_losses)={len(val_losses)}"
        )
    for arg, values in per_radius.items():
        if values is not None and len(values) != len(rhos):
            raise ValueError(
                f"`{arg}` must have one entry per radius. Received: len({arg})={len(values)} "
                f"for {len(rhos)} radii"
            )


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
            (`name -> value`), `train_loss`, `val_loss`, `val_se` (its
            standard error), `val_losses` (the per-sample validation
            losses, when the compiled loss allows them) and `net_share`
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
        eligible: the radii the selection rule cannot tell from the best
            one (and not worse than the physics part alone).
        rule: the selection rule asked for (`"paired"` or `"relative"`).
        rule_used: the rule applied (`"paired"` falls back to
            `"relative"` when the rows carry neither per-sample losses nor
            standard errors).
        test: `"paired t"`, `"unpaired z"` or `None` (relative rule).
        p_values: per radius, the one-sided p-value of "worse than the
            best radius" (`None` under the relative rule).
        level: family-wise level of the paired rule.
        margin: the paired rule's tolerated fraction of the gap between
            the physics part alone and the best radius.
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
                 noise_level=2.0, rule="paired", level=0.05, margin=0.0):
        self.rows = rows
        self.noise_level = noise_level
        self.physics_only = physics_only
        self.sam = sam
        self.tolerance = tolerance
        self.stable_tolerance = stable_tolerance
        self.units = units
        self.rule = rule
        self.level = level
        self.margin = margin
        self.rhos = sorted({row["rho"] for row in rows})
        self.summary = [self._summarize(rho) for rho in self.rhos]
        reference = None if physics_only is None else physics_only["val_loss"]
        val = [s["val_loss"] for s in self.summary]
        se = [s["val_se"] for s in self.summary]
        samples = [self._per_sample(rho) for rho in self.rhos]
        if any(x is None for x in samples):
            samples = None
        result = eligible_radii(self.rhos, val, tolerance, reference, se, noise_level, rule=rule,
                                per_sample_losses=samples, level=level, margin=margin)
        finite = [v for v in val if math.isfinite(v)]
        best = min(finite) if finite else math.nan
        self.eligible = result["eligible"]
        self.chosen = max(self.eligible) if self.eligible else None
        self.limit = result["limit"]
        self.rule_used = result["rule"]
        self.test = result["test"]
        self.p_values = result["p_values"]
        self.network_needed = not (
            reference is not None and math.isfinite(reference) and finite and reference <= best
        )
        self.spread, self.stable = self._stability()
        self.best_model = models.get(self.chosen)

    def _per_sample(self, rho):
        """Per-sample validation losses at `rho`, averaged over seeds
        (`None` if a row lacks them)."""
        rows = [row for row in self.rows if row["rho"] == rho]
        if any(row.get("val_losses") is None for row in rows):
            return None
        losses = [np.asarray(row["val_losses"], "float64") for row in rows]
        if len({x.shape for x in losses}) != 1:
            return None
        return np.mean(losses, axis=0)

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

    def refine_rhos(self):
        """Radii between the chosen radius and its neighbours on the grid
        (geometric midpoints, two significant digits; a third of the
        chosen radius below it when its neighbour is 0), to fit next
        (e.g. `radius_path(..., rhos=path.refine_rhos())`) when only the
        chosen radius is eligible: a single radius cannot show whether
        the constants stay put near it.

        Returns:
            A list of new radii (empty without a positive chosen radius).
        """
        if not self.chosen:
            return []
        i = self.rhos.index(self.chosen)
        out = []
        if i > 0:
            low = self.rhos[i - 1]
            out.append(math.sqrt(low * self.chosen) if low > 0 else self.chosen / 3.0)
        if i + 1 < len(self.rhos):
            out.append(math.sqrt(self.chosen * self.rhos[i + 1]))
        return [float(f"{r:.2g}") for r in out if float(f"{r:.2g}") not in self.rhos]

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
            "rule": self.rule,
            "level": self.level,
            "margin": self.margin,
            "rule_used": self.rule_used,
            "test": self.test,
            "p_values": self.p_values,
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
        # Paths saved before the paired rule was chosen with the relative rule.
        return cls(config["rows"], config["physics_only"], SAM.from_config(config["sam"]),
                   config["tolerance"], config.get("stable_tolerance", 0.05), config["units"], {},
                   config.get("noise_level", 2.0), rule=config.get("rule", "relative"),
                   level=config.get("level", 0.05), margin=config.get("margin", 0.0))

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
        cap = ", and not above the physics part alone)" if self.physics_only else ")"
        if self.rule_used == "paired":
            worse = "worse" if not self.margin else (
                f"worse by more than {self.margin:.0%} of the gain over the physics part alone")
            lines.append(
                f"chosen: rho = {self.chosen} (largest radius not significantly {worse} than "
                f"the best: one-sided {self.test} test, Holm's correction at level "
                f"{self.level:g}{cap}")
            lines.append("p-values (worse than the best): " + ", ".join(
                f"{r:g}: {'best' if p == 1.0 else f'{p:.2g}'}"
                for r, p in zip(self.rhos, self.p_values)))
        else:
            fallback = " (no per-sample losses or standard errors for the paired rule)" if (
                self.rule == "paired") else ""
            lines.append(
                f"chosen: rho = {self.chosen} (largest radius whose validation loss is at most "
                f"{self.limit:.4g}: the best plus the larger of {self.tolerance:.0%} and "
                f"{self.noise_level:g} standard errors{cap}{fallback}"
            )
        if not self.network_needed:
            lines.append(
                "the physics part alone fits the validation data at least as well as every "
                "radius: the network may not be needed"
            )
        if len(self.eligible) == 1 and self.refine_rhos():
            lines.append(
                f"only rho = {self.eligible[0]:g} is eligible: fit the radii "
                f"{self.refine_rhos()} to see whether the constants stay put near it"
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


def _per_sample_losses(model, x, y, batch_size):
    """Per-sample validation losses (the compiled loss of each sample,
    averaged over its remaining axes, e.g. the time steps of a
    trajectory), as a float64 array; `None` when the compiled loss is not
    a single Keras loss (a name, a function or a `keras.losses.Loss`) or
    the targets are not one array. Regularization penalties are not
    included: they are the same for every sample."""
    try:
        loss = keras.losses.get(model.loss)
        if loss is None or isinstance(y, (dict, list, tuple)):
            return None
        y_pred = model.predict(x, batch_size=batch_size, verbose=0)
        if isinstance(loss, keras.losses.Loss):
            per_sample = loss.call(keras.ops.convert_to_tensor(y, "float32"), y_pred)
        else:
            per_sample = loss(keras.ops.convert_to_tensor(y, "float32"), y_pred)
        per_sample = np.asarray(keras.ops.convert_to_numpy(per_sample), "float64")
        return per_sample.reshape(len(per_sample), -1).mean(axis=1)
    except (TypeError, ValueError):
        return None


def _standard_error(model, x, y, batch_size, per_sample=None):
    """Standard error of the mean validation loss, from per-sample losses
    (`nan` without them, or with fewer than two)."""
    if per_sample is None:
        per_sample = _per_sample_losses(model, x, y, batch_size)
    if per_sample is None or len(per_sample) < 2:
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
        "net_share": _net_share(model, train[0], batch_size),
    }
    per_sample = _per_sample_losses(model, val[0], val[1], batch_size)
    row["val_se"] = _standard_error(model, val[0], val[1], batch_size, per_sample)
    row["val_losses"] = None if per_sample is None else [float(v) for v in per_sample]
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
    rule="paired",
    level=0.05,
    margin=0.0,
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
    The radius is chosen by `choose_radius` from the validation losses,
    never from the constants themselves. By default (`rule="paired"`)
    every radius is compared with the radius of lowest mean validation
    loss by a one-sided paired t test on the per-sample validation losses
    (each validation sample scored by both models; averaged over seeds),
    with Holm's correction over the radii at family-wise level `level`:

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
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}. Received: rule={rule!r}")
    level = _check_number("level", level, minimum=0.0)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1). Received: level={level!r}")
    margin = _check_number("margin", margin, minimum=0.0)
    if margin >= 1.0:
        raise ValueError(f"`margin` must be in [0, 1). Received: margin={margin!r}")
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
                      noise_level, rule=rule, level=level, margin=margin)
    return path
