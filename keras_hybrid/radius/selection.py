"""The radius selection rules: a paired test (Wilcoxon signed-rank, or t)
of each radius against the best one with Holm's correction, the former
relative rule, and the eligible set and chosen radius they give.

Pure functions of validation losses; no model is fitted here.
"""

import math
import numbers

import numpy as np


RULES = ("paired", "relative")

#: The paired rule's tests: `"auto"` is the signed-rank test when there are
#: enough validation samples that differ for it to reject at Holm's smallest
#: threshold, else the t test.
PAIRED_TESTS = ("auto", "signed_rank", "t")


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


def _paired_differences(losses, best_losses):
    """`losses - best_losses` as float64 vectors of the same samples (at
    least two)."""
    a = np.asarray(losses, "float64").reshape(-1)
    b = np.asarray(best_losses, "float64").reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(
            "`losses` and `best_losses` must be per-sample losses of the same samples, at least "
            f"two. Received: len(losses)={a.size}, len(best_losses)={b.size}"
        )
    for arg, values in (("losses", a), ("best_losses", b)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"`{arg}` must be finite (a diverged model has no paired test). Received: "
                f"{bad.size} non-finite value(s), the first {arg}[{bad[0]}]={values[bad[0]]}"
            )
    return a - b


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
    d = _paired_differences(losses, best_losses)
    excess = float(np.mean(d)) - margin
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        t = math.inf if excess > 0 else (-math.inf if excess < 0 else 0.0)
        return t, (0.0 if excess > 0 else 1.0)
    t = excess / (sd / math.sqrt(d.size))
    return t, _one_sided_p(t, d.size - 1)


# Below this many nonzero differences the signed-rank p-value is exact.
_EXACT_SIGNED_RANK = 200


def signed_rank_test(losses, best_losses, margin=0.0):
    """One-sided Wilcoxon signed-rank test: do `losses` tend to exceed
    `best_losses` by more than `margin`?

    The per-sample differences `d_i = losses_i - best_losses_i - margin`
    that are not zero are ranked by `|d_i|` (ties get their mean rank),
    and `W+` sums the ranks of the positive ones. Under the null hypothesis
    (differences symmetric about zero) each rank's sign is a fair coin, so

    ```
    p = P(W+ >= observed W+)
    ```

    exactly (by enumeration of the sign patterns, ties included) up to 200
    nonzero differences, and from the normal approximation with the tie
    correction and a continuity correction above.

    Unlike the paired t test it reads ranks, not sizes: a few samples with
    very large differences cannot hide that a model is worse on most of
    the others, which is what skewed per-sample squared errors do to the t
    test. It tests a shift of the differences' centre, not of their mean.

    Args:
        losses: per-sample losses of one model, shape `(n,)`, `n >= 2`.
        best_losses: per-sample losses of the reference model on the same
            samples, shape `(n,)`.
        margin: the difference that does not count as worse, >= 0.
            Defaults to `0.0`.

    Returns:
        `(w, p)`: the statistic `W+` and its one-sided p-value (`p = 1`
        when every difference is zero).

    Example:

    >>> w, p = signed_rank_test([1.2, 2.1, 3.3, 4.4], [1.0, 2.0, 3.0, 4.0])
    >>> w, p
    (10.0, 0.0625)
    """
    margin = _check_number("margin", margin, minimum=0.0)
    d = _paired_differences(losses, best_losses) - margin
    d = d[d != 0.0]
    if d.size == 0:
        return 0.0, 1.0
    # Twice the mean ranks are integers, so the exact null distribution of
    # 2 W+ can be enumerated over integer sums.
    doubled = _doubled_mean_ranks(np.abs(d))
    w2 = int(np.sum(doubled[d > 0]))
    if d.size <= _EXACT_SIGNED_RANK:
        # probability[s] = P(2 W+ = s) over the ranks added so far.
        probability = np.zeros(int(doubled.sum()) + 1)
        probability[0] = 1.0
        for r in doubled:  # r >= 2
            shifted = np.zeros_like(probability)
            shifted[r:] = probability[:-r]
            probability = 0.5 * (probability + shifted)
        return w2 / 2.0, float(min(1.0, probability[w2:].sum()))
    n = d.size
    _, tie_sizes = np.unique(np.abs(d), return_counts=True)
    variance = n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(tie_sizes**3 - tie_sizes)) / 48.0
    z = (w2 / 2.0 - n * (n + 1) / 4.0 - 0.5) / math.sqrt(variance)
    return w2 / 2.0, _one_sided_p(z, math.inf)


def _doubled_mean_ranks(values):
    """Twice the rank of each value (1-based), ties sharing their mean
    rank: integers."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Runs of equal values: positions start..stop-1 share the ranks
    # start+1..stop, whose mean doubled is start + stop + 1.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    stops = np.r_[starts[1:], values.size]
    doubled = np.empty(values.size, dtype=np.int64)
    doubled[order] = np.repeat(starts + stops + 1, stops - starts)
    return doubled


def rank_test_resolves(num_samples, num_comparisons, level):
    """Whether the exact signed-rank test on `num_samples` nonzero paired
    differences (it drops the zero ones) can reject at Holm's smallest
    threshold `level / num_comparisons`: its smallest p-value is
    `2**-num_samples` (every difference positive)."""
    return 2.0 ** -num_samples <= level / max(num_comparisons, 1)


def radius_p_values(rhos, val_losses, per_sample_losses=None, standard_errors=None,
                    reference_loss=None, margin=0.0, paired_test="auto", level=0.05):
    """One-sided p-values of "radius r fits the validation data worse than
    the best radius" (the test behind `choose_radius(rule="paired")`).

    With per-sample validation losses, a paired test of each radius
    against the radius of lowest mean validation loss: the Wilcoxon
    signed-rank test (`signed_rank_test`), or the t test
    (`paired_t_test`). Per-sample squared errors are skewed: when a few
    samples carry most of a radius's excess loss, the t test sees a large
    variance and keeps a radius that is worse on nearly every sample,
    where the rank test rejects it. With few samples the rank test cannot
    reject at all (its smallest p-value is `2**-n` for `n` nonzero
    differences: samples scored alike at both radii, such as samples of
    weight 0, do not count), and `"auto"` uses the t test there.
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
        paired_test: `"auto"` (signed-rank when
            `rank_test_resolves(n, comparisons, level)` for the number `n`
            of nonzero differences of every comparison that has one, else
            t), `"signed_rank"` or `"t"`. Defaults to `"auto"`.
        level: the family-wise level that `"auto"` checks the rank test's
            resolution against, in (0, 1). Defaults to `0.05`.

    Returns:
        `(p_values, method)`: a list (`1.0` for the best radius, `nan` for
        non-finite losses or missing information) and `"signed rank"`,
        `"paired t"`, `"unpaired z"` or `None` (neither per-sample losses
        nor standard errors: no test is possible).
    """
    rhos, val_losses = list(rhos), _check_losses("val_losses", val_losses)
    _check_lengths(rhos, val_losses, per_sample_losses=per_sample_losses,
                   standard_errors=standard_errors)
    standard_errors = _check_losses("standard_errors", standard_errors, unknown=True)
    if reference_loss is not None:
        reference_loss = _as_number("reference_loss", reference_loss)
    margin = _check_number("margin", margin, minimum=0.0)
    _check_paired_test(paired_test)
    level = _check_level(level)
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
            math.isfinite(standard_errors[i]) for i in finite):
        ses = standard_errors
    if samples is None and ses is None:
        return p, None
    method = "unpaired z"
    if samples is not None:
        # The rank test drops zero differences; a comparison with none but
        # zeros has p = 1 under either test.
        nonzero = [int(np.count_nonzero(samples[i] - samples[best] - delta))
                   for i in finite if i != best]
        ranks = paired_test == "signed_rank" or (paired_test == "auto" and rank_test_resolves(
            min([n for n in nonzero if n] or [0]), len(finite) - 1, level))
        method = "signed rank" if ranks else "paired t"
    for i in finite:
        if i == best:
            p[i] = 1.0
        elif method == "signed rank":
            p[i] = signed_rank_test(samples[i], samples[best], delta)[1]
        elif method == "paired t":
            p[i] = paired_t_test(samples[i], samples[best], delta)[1]
        else:
            scale = math.hypot(ses[i], ses[best])
            excess = val_losses[i] - val_losses[best] - delta
            z = excess / scale if scale > 0 else (math.inf if excess > 0 else -math.inf)
            p[i] = _one_sided_p(z, math.inf)
    return p, method


def holm_rejections(p_values, level):
    """Which hypotheses Holm's step-down procedure rejects at family-wise
    level `level`: sort the `m` finite p-values, reject the `k`-th
    smallest while `p_(k) <= level / (m - k + 1)`, stop at the first that
    is not. `nan` entries are never rejected and not counted.

    Example:

    >>> holm_rejections([0.01, 0.04, 0.03, 0.5], 0.05)
    [True, False, False, False]
    """
    level = _check_level(level)
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
                   margin=0.0, paired_test="auto"):
    """The radii that `choose_radius` may choose, and how they were found.

    See `choose_radius` for the rules and the arguments.

    Returns:
        A dict: `eligible` (the radii, increasing; the best radius alone
        when none passes), `best` (the radius of lowest validation loss),
        `rule` (the rule applied: `"paired"` or `"relative"`; `"paired"`
        falls back to `"relative"` when neither per-sample losses nor
        standard errors are given), `test` (`"signed rank"`, `"paired t"`,
        `"unpaired z"` or `None`), `p_values` (per radius, `None` for the relative rule)
        and `limit` (the relative rule's largest accepted loss; for the
        paired rule the physics-only cap, or `inf`).
    """
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}. Received: rule={rule!r}")
    _check_paired_test(paired_test)
    rhos, val_losses = list(rhos), _check_losses("val_losses", val_losses)
    _check_lengths(rhos, val_losses, per_sample_losses=per_sample_losses,
                   standard_errors=standard_errors)
    standard_errors = _check_losses("standard_errors", standard_errors, unknown=True)
    if reference_loss is not None:
        reference_loss = _as_number("reference_loss", reference_loss)
    level = _check_level(level)
    finite = [(r, v) for r, v in zip(rhos, val_losses) if math.isfinite(v)]
    out = {"eligible": [], "best": None, "rule": rule, "test": None, "p_values": None,
           "limit": math.nan}
    p_values, test = None, None
    if rule == "paired":
        p_values, test = radius_p_values(rhos, val_losses, per_sample_losses, standard_errors,
                                         reference_loss, margin, paired_test, level)
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
                  per_sample_losses=None, level=0.05, margin=0.0, paired_test="auto"):
    """The radius chosen from validation losses alone.

    The rule prefers the strongest regularization: the largest radius
    whose validation loss the data cannot tell from the best one. Two
    ways to decide "cannot tell":

    `rule="paired"` (the default): a radius is eligible unless it is
    significantly worse than the best radius, by a one-sided test of the
    difference of their validation losses, with Holm's correction over
    the radii (family-wise level `level`): a paired test on per-sample
    losses (`per_sample_losses`, the same validation samples scored at
    every radius), else the unpaired normal approximation from
    `standard_errors` (conservative). The paired test is the Wilcoxon
    signed-rank test, or the t test where too few samples differ for
    ranks to reject (`paired_test="auto"`, see `radius_p_values`). The
    eligible set is then a confidence set for the best radius: with
    probability about `1 - level` no radius as good as the best is
    excluded. With many validation samples it narrows to the radii the
    data cannot separate; with few it stays wide. It is scale free: it
    depends on the losses only through ranks or the ratio of their
    differences to their noise. It also
    depends on how many radii are compared: each added radius makes
    Holm's thresholds stricter, so a finer grid can widen the set.

    ```
    d_i(r)   = loss_i(r) - loss_i(best) - m             (per validation sample i)
    p(r)     = P(W+ >= W+(r))   W+: sum of the ranks of |d_i| over d_i > 0  (signed rank)
          or   P(T_{n-1} > mean d(r) / (std d(r) / sqrt(n)))                  (t)
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
    limit    = max(best + tolerance * |best|, best + noise_level * se_best)
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
            root of their number; `None` for one not known), or `None`.
            Defaults to `None`.
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
        paired_test: the `"paired"` rule's test on per-sample losses:
            `"auto"`, `"signed_rank"` or `"t"`. Defaults to `"auto"`.

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
                            level=level, margin=margin, paired_test=paired_test)
    return max(result["eligible"]) if result["eligible"] else None


def check_radii(rhos):
    """`rhos` as floats: numbers >= 0, each once (a negative radius is no
    SAM setting; a repeated one is ambiguous)."""
    values = [_check_number(f"rhos[{i}]", rho, minimum=0.0) for i, rho in enumerate(rhos)]
    if len(set(values)) != len(values):
        raise ValueError(f"`rhos` must be distinct radii. Received: rhos={list(rhos)!r}")
    return values


def _check_lengths(rhos, val_losses, **per_radius):
    check_radii(rhos)
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
    val_losses = _check_losses("val_losses", val_losses)
    standard_errors = _check_losses("standard_errors", standard_errors, unknown=True)
    if reference_loss is not None:
        reference_loss = _as_number("reference_loss", reference_loss)
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
    # Slack in proportion to |best|: losses may be negative (cosine
    # similarity, Gaussian negative log-likelihood).
    limit = best + tolerance * abs(best)
    if standard_errors is not None and math.isfinite(standard_errors[best_index]):
        limit = max(limit, best + noise_level * standard_errors[best_index])
    if reference_loss is not None and math.isfinite(reference_loss):
        limit = min(limit, reference_loss)
    return limit


def _check_paired_test(paired_test):
    if paired_test not in PAIRED_TESTS:
        raise ValueError(
            f"`paired_test` must be one of {PAIRED_TESTS}. Received: paired_test={paired_test!r}")


def _check_level(level):
    level = _check_number("level", level, minimum=0.0)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1). Received: level={level!r}")
    return level


def _check_losses(arg, values, unknown=False):
    """`values` as floats (non-finite ones too: a diverged fit); `None`
    entries as `nan` (not known) where `unknown`, else an error."""
    if values is None:
        return None
    return [math.nan if unknown and v is None else _as_number(f"{arg}[{i}]", v)
            for i, v in enumerate(values)]


def _as_number(arg, value):
    """`value` as a float: a real number, also a NumPy or TensorFlow scalar
    (not a bool, a string or `None`)."""
    if value is None or isinstance(value, (bool, str, bytes)) or np.ndim(value) != 0:
        raise TypeError(f"`{arg}` must be a number. Received: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{arg}` must be a number. Received: {value!r}") from None


def _check_number(arg, value, minimum=None, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an integer" if integer else "a real number"
        raise TypeError(f"`{arg}` must be {expected}. Received: {arg}={value!r}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"`{arg}` must be finite and >= {minimum}. Received: {arg}={value!r}")
    return int(value) if integer else float(value)
