"""radius_path / choose_radius: the selection rule, the physics-only
reference, stability of constants, and bad input."""

import itertools
import json
import math
import warnings

import numpy as np
import pytest

import keras
import tensorflow as tf
import keras_hybrid as kh
from keras_hybrid.radius import RadiusPath, choose_radius, fitting


@keras.saving.register_keras_serializable(package="test_radius")
def ohm(current, constants):
    return constants["R"] * current


@keras.saving.register_keras_serializable(package="test_radius")
def ohm_any_name(current, constants):
    (resistance,) = constants.values()
    return resistance * current


# -- the pure rule ------------------------------------------------------------


def test_choose_radius_takes_largest_within_tolerance():
    rhos = [0.0, 0.1, 0.3, 1.0]
    val = [1.00, 0.90, 1.10, 1.20]
    # best 0.90; limit 1.125: 0.0, 0.1, 0.3 eligible -> 0.3
    assert choose_radius(rhos, val, tolerance=0.25, rule="relative") == 0.3
    # limit 1.35: 1.0 eligible too
    assert choose_radius(rhos, val, tolerance=0.5, rule="relative") == 1.0
    # plain argmin
    assert choose_radius(rhos, val, tolerance=0.0, rule="relative") == 0.1


def test_choose_radius_never_worse_than_physics_alone():
    rhos = [0.0, 0.1, 0.3, 1.0]
    val = [1.00, 0.90, 1.10, 1.20]
    # the physics part alone reaches 1.05: 0.3 (1.10) is not eligible any more
    assert choose_radius(rhos, val, 0.25, reference_loss=1.05, rule="relative") == 0.1
    # physics alone better than every radius: the best radius is returned
    assert choose_radius(rhos, val, 0.25, reference_loss=0.5, rule="relative") == 0.1


def test_choose_radius_counts_the_noise_of_the_validation_loss():
    rhos = [0.0, 0.01, 0.1]
    val = [1.00, 1.30, 1.60]
    # relative slack alone: limit 1.25 -> plain training
    assert choose_radius(rhos, val, 0.25, rule="relative") == 0.0
    # best loss known to +-0.2 (12 points): limit 1 + 2 * 0.2 = 1.4 -> 0.01
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.2, 0.2, 0.2], rule="relative") == 0.01
    # the standard error of the *best* radius sets the limit
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.1, 0.5, 0.5], rule="relative") == 0.0
    # noise_level=0 is the relative rule; 3 standard errors reach 1.6
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.2] * 3, noise_level=0, rule="relative") == 0.0
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.2] * 3, noise_level=3, rule="relative") == 0.1
    # still capped by the physics part alone
    assert choose_radius(rhos, val, 0.25, 1.2, standard_errors=[0.2] * 3, rule="relative") == 0.0
    with pytest.raises(ValueError, match="one entry per radius"):
        choose_radius(rhos, val, standard_errors=[0.1], rule="relative")
    with pytest.raises(ValueError, match="noise_level=-1"):
        choose_radius(rhos, val, noise_level=-1, rule="relative")


def test_standard_error_of_the_validation_loss_from_per_sample_losses():
    from keras_hybrid.radius import _standard_error

    x, y = _data(n=12)
    model = _builder([])(None)
    residual = (np.asarray(model.predict(x, verbose=0)) - y)[:, 0].astype("float64")
    per_sample = residual ** 2
    expected = per_sample.std(ddof=1) / np.sqrt(12)
    np.testing.assert_allclose(_standard_error(model, x, y, 12), expected, rtol=1e-4)


def test_choose_radius_skips_non_finite_losses():
    assert choose_radius([0.0, 0.1, 1.0], [1.0, math.nan, math.inf]) == 0.0
    assert choose_radius([0.0, 1.0], [math.nan, math.nan]) is None


def test_choose_radius_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        choose_radius([0.0, 0.1], [1.0])
    with pytest.raises(ValueError, match="tolerance=-0.1"):
        choose_radius([0.0], [1.0], tolerance=-0.1)
    # Radii as `radius_path` takes them: >= 0 and each once.
    with pytest.raises(ValueError, match=r"rhos\[0\]=-0.1"):
        choose_radius([-0.1, 0.1], [1.0, 0.9], rule="relative")
    with pytest.raises(ValueError, match=r"distinct radii. Received: rhos=\[0.1, 0.1, 0.3\]"):
        kh.eligible_radii([0.1, 0.1, 0.3], [1.0, 0.9, 0.95], rule="relative")
    with pytest.raises(TypeError, match=r"rhos\[1\]='0.1'"):
        kh.radius_p_values([0.0, "0.1"], [1.0, 0.9])


def test_the_relative_rule_takes_negative_losses():
    # (1 + tolerance) * best lay below a negative best loss: a tie chose the
    # smaller radius, and the limit excluded the best radius's equals.
    from keras_hybrid.radius import selection_limit

    assert choose_radius([0.0, 0.1], [-1.0, -1.0], rule="relative") == 0.1
    # best -2, slack 0.25 * |-2|: limit -1.5
    assert selection_limit([0.0, 0.1, 0.3], [-2.0, -2.0, -1.4]) == -1.5
    assert kh.eligible_radii([0.0, 0.1, 0.3], [-2.0, -2.0, -1.4],
                             rule="relative")["eligible"] == [0.0, 0.1]


def test_none_standard_errors_and_losses_that_are_no_numbers():
    # A `None` standard error (not known) crashed with an anonymous
    # TypeError for a diverged radius, and for the best one under the
    # relative rule; non-numbers and an unchecked `level` passed or failed
    # without naming the argument.
    from keras_hybrid.radius import selection_limit

    rhos, val = [0.0, 0.1, 0.3], [1.0, 1.05, math.nan]
    assert choose_radius(rhos, val, standard_errors=[0.1, 0.1, None]) == 0.1
    p, test = kh.radius_p_values(rhos, val, standard_errors=[0.1, 0.1, None])
    z = 0.05 / math.hypot(0.1, 0.1)
    assert test == "unpaired z" and p[:2] == [1.0, pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))]
    assert math.isnan(p[2])
    # None for the best radius: the relative slack alone, 1.25
    assert selection_limit([0.0, 0.1], [1.0, 1.1], standard_errors=[None, 0.1]) == 1.25
    assert choose_radius([0.0, 0.1], [1.0, 1.1], standard_errors=[None, 0.1], rule="relative") == 0.1
    samples = [[1.0, 1.1, 1.2], [1.2, 1.3, 1.5]]
    with pytest.raises(ValueError, match=r"`level` must be in \(0, 1\). Received: level=5.0"):
        kh.radius_p_values([0.0, 0.1], [1.1, 1.33], samples, level=5.0)
    with pytest.raises(ValueError, match=r"Received: level=-0.5"):
        kh.radius_p_values([0.0, 0.1], [1.1, 1.33], samples, level=-0.5)
    with pytest.raises(TypeError, match=r"Received: level='0.05'"):
        kh.radius_p_values([0.0, 0.1], [1.1, 1.33], samples, level="0.05")
    with pytest.raises(TypeError, match=r"^`val_losses\[1\]` must be a number. Received: None$"):
        choose_radius([0.0, 0.1], [1.0, None])
    with pytest.raises(TypeError, match=r"^`val_losses\[0\]` must be a number. Received: '1.0'$"):
        kh.radius_p_values([0.0, 0.1], ["1.0", 1.1], standard_errors=[0.1, 0.1])
    with pytest.raises(TypeError, match=r"^`reference_loss` must be a number. Received: '2'$"):
        choose_radius([0.0, 0.1], [1.0, 1.1], reference_loss="2")
    with pytest.raises(TypeError, match=r"^`standard_errors\[1\]` must be a number. Received: 'x'$"):
        selection_limit([0.0, 0.1], [1.0, 1.1], standard_errors=[0.1, "x"])
    # Scalars of NumPy and TensorFlow are numbers (a loss computed with keras.ops).
    assert choose_radius([0.0, 0.1], [np.array(1.0), tf.constant(1.0)], rule="relative") == 0.1


# -- the paired rule -----------------------------------------------------------


def _t5_upper_tail(t):
    # Student's t with 5 degrees of freedom in closed form:
    # F(t) = 1/2 + (theta + sin cos (1 + 2/3 cos^2)) / pi, theta = atan(t / sqrt 5)
    theta = math.atan(t / math.sqrt(5.0))
    c, s = math.cos(theta), math.sin(theta)
    return 0.5 - (theta + s * c * (1.0 + 2.0 / 3.0 * c * c)) / math.pi


def test_paired_t_test_against_a_hand_computation():
    # d = (0.2, 0.1, 0.3): mean 0.2, std 0.1, t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3;
    # two degrees of freedom: P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2
    t, p = kh.paired_t_test([1.2, 2.1, 3.3], [1.0, 2.0, 3.0])
    assert t == pytest.approx(2 * math.sqrt(3), rel=1e-9)
    assert p == pytest.approx(0.5 * (1 - t / math.sqrt(t * t + 2)), rel=1e-9)
    assert p == pytest.approx(0.03709, abs=1e-5)
    # with a margin of 0.1 the excess is 0.1: t = sqrt 3
    t, p = kh.paired_t_test([1.2, 2.1, 3.3], [1.0, 2.0, 3.0], margin=0.1)
    assert t == pytest.approx(math.sqrt(3), rel=1e-9)
    assert p == pytest.approx(0.5 * (1 - t / math.sqrt(t * t + 2)), rel=1e-9)
    # the tables' 95 % and 97.5 % points of t with 10 degrees of freedom
    from keras_hybrid.radius import _one_sided_p

    assert _one_sided_p(1.8125, 10) == pytest.approx(0.05, abs=2e-5)
    assert _one_sided_p(2.2281, 10) == pytest.approx(0.025, abs=2e-5)
    assert _one_sided_p(-1.8125, 10) == pytest.approx(0.95, abs=2e-5)
    # equal differences: certain
    assert kh.paired_t_test([2.0, 3.0], [1.0, 2.0]) == (math.inf, 0.0)
    with pytest.raises(ValueError, match="len\\(losses\\)=3, len\\(best_losses\\)=2"):
        kh.paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="margin=-0.1"):
        kh.paired_t_test([1.0, 2.0], [1.0, 2.0], margin=-0.1)


def _brute_force_signed_rank_p(d):
    """P(W+ >= observed) by enumerating every sign pattern (ties: mean ranks)."""
    d = np.asarray([x for x in d if x != 0.0])
    a = np.abs(d)
    ranks = np.array([(np.sum(a < v) + 1 + np.sum(a <= v)) / 2.0 for v in a])
    observed = ranks[d > 0].sum()
    hits = sum(ranks[np.array(signs, bool)].sum() >= observed - 1e-9
               for signs in itertools.product([0, 1], repeat=d.size))
    return observed, hits / 2.0 ** d.size


def test_signed_rank_test_against_enumeration_of_the_signs():
    rng = np.random.default_rng(3)
    for _ in range(4):
        # quarters on integers (exact in floating point): ties in |d| and
        # exact zeros, which are dropped
        d = np.round(4.0 * rng.normal(0.3, 1.0, 11)) / 4.0
        best = rng.integers(1, 5, 11).astype(float)
        w, p = kh.signed_rank_test(best + d, best)
        w_ref, p_ref = _brute_force_signed_rank_p(d)
        assert w == pytest.approx(w_ref) and p == pytest.approx(p_ref, rel=1e-9)
    # all four positive: W+ = 10, p = 1/16; with a margin the shift is removed first
    assert kh.signed_rank_test([1.2, 2.1, 3.3, 4.4], [1.0, 2.0, 3.0, 4.0]) == (10.0, 0.0625)
    w, p = kh.signed_rank_test([1.5, 2.0, 3.5, 4.75], [1.0, 2.0, 3.0, 4.0], margin=0.25)
    # d - 0.25 = (0.25, -0.25, 0.25, 0.5): ranks 2, 2, 2, 4; W+ = 8. Of the
    # 16 sign patterns, W+ >= 8 needs the 4 and at least two of the 2s: 4/16.
    assert w == 8.0 and p == pytest.approx(4 / 16)
    assert p == pytest.approx(_brute_force_signed_rank_p([0.25, -0.25, 0.25, 0.5])[1])
    assert kh.signed_rank_test([1.0, 2.0], [1.0, 2.0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="len\\(losses\\)=3, len\\(best_losses\\)=2"):
        kh.signed_rank_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="margin=-0.1"):
        kh.signed_rank_test([1.0, 2.0], [1.0, 2.0], margin=-0.1)


def test_signed_rank_normal_approximation_matches_the_exact_test(monkeypatch):
    import keras_hybrid.radius.selection as selection

    rng = np.random.default_rng(0)
    for shift in (0.05, 0.15, 0.3):
        d = np.round(rng.normal(shift, 1.0, 150), 2)   # ties
        exact = kh.signed_rank_test(d, np.zeros_like(d))
        monkeypatch.setattr(selection, "_EXACT_SIGNED_RANK", 0)
        normal = kh.signed_rank_test(d, np.zeros_like(d))
        monkeypatch.undo()
        assert normal[0] == exact[0]
        assert normal[1] == pytest.approx(exact[1], abs=2e-3, rel=0.03)
    # By hand: |d| ranks 1,1 -> 1.5; 2,2,2 -> 4; 3,3 -> 6.5; 4 -> 8; 5 -> 9; 6 -> 10.
    # W+ = 1.5 + 1.5 + 3 * 4 + 6.5 + 8 + 9 = 38.5, mean n(n+1)/4 = 27.5,
    # variance 10 * 11 * 21 / 24 - (6 + 24 + 6) / 48 = 95.5 (tie correction),
    # z = (38.5 - 27.5 - 0.5) / sqrt(95.5) (continuity correction).
    monkeypatch.setattr(selection, "_EXACT_SIGNED_RANK", 0)
    d = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, -3.0, 4.0, 5.0, -6.0])
    w, p = kh.signed_rank_test(d, np.zeros_like(d))
    z = 10.5 / math.sqrt(95.5)
    assert w == 38.5 and p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2.0)), rel=1e-12)


def test_rank_rule_rejects_a_radius_worse_on_nearly_every_sample():
    # Radius 0.3 is worse than the best on 17 of 20 samples by 0.01,
    # better on two by 0.005, and worse on one by 5: the one large
    # difference inflates the t test's variance (t = 1.03, p = 0.16, kept),
    # while the ranks see 17 of 20 worse: W+ = 210 - 3 = 207 (the two
    # negatives share ranks 1 and 2), p = 3 / 2^20 after enumeration.
    best = np.linspace(1.0, 2.0, 20)
    rival = best + np.array([0.01] * 17 + [-0.005, -0.005, 5.0])
    rhos, samples = [0.0, 0.3], [best, rival]
    val = [float(np.mean(x)) for x in samples]
    p_t, test_t = kh.radius_p_values(rhos, val, per_sample_losses=samples, paired_test="t")
    p_r, test_r = kh.radius_p_values(rhos, val, per_sample_losses=samples)
    assert (test_t, test_r) == ("paired t", "signed rank")
    assert p_t[1] == pytest.approx(0.158, abs=2e-3)
    assert p_r[1] == pytest.approx(_brute_force_signed_rank_p(rival - best)[1], rel=1e-9)
    assert p_r[1] < 1e-5
    assert choose_radius(rhos, val, per_sample_losses=samples, paired_test="t") == 0.3
    assert choose_radius(rhos, val, per_sample_losses=samples) == 0.0


def test_auto_uses_the_t_test_where_ranks_cannot_reject():
    # Four samples: the rank test's smallest p-value is 2^-4 = 0.0625, above
    # Holm's 0.05 / 2 and even 0.05: "auto" takes the t test.
    from keras_hybrid.radius import rank_test_resolves

    assert not rank_test_resolves(4, 2, 0.05) and not rank_test_resolves(4, 1, 0.05)
    assert rank_test_resolves(5, 1, 0.05) and not rank_test_resolves(5, 2, 0.05)
    assert rank_test_resolves(6, 2, 0.05)   # 1/64 <= 0.025
    best = [1.0, 2.0, 3.0, 4.0]
    worse = [1.2, 2.2, 3.25, 4.2]
    rhos, samples = [0.0, 0.1, 0.3], [best, worse, worse]
    val = [float(np.mean(x)) for x in samples]
    p, test = kh.radius_p_values(rhos, val, per_sample_losses=samples)
    assert test == "paired t" and p[1] == kh.paired_t_test(worse, best)[1] < 0.025
    assert choose_radius(rhos, val, per_sample_losses=samples) == 0.0
    # Forced ranks reject nothing: every radius stays eligible.
    assert choose_radius(rhos, val, per_sample_losses=samples, paired_test="signed_rank") == 0.3


def test_auto_counts_only_the_differences_the_rank_test_sees():
    # Two samples of weight 0 score 0 at every radius: the rank test drops
    # them (smallest p-value 2^-4 = 0.0625 > 0.05), yet "auto" counted six
    # samples, took it and kept a radius worse on every weighted sample.
    best = [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]
    worse = [0.5, 0.7, 0.9, 1.1, 0.0, 0.0]
    rhos, val = [0.0, 0.1], [sum(best) / 6, sum(worse) / 6]
    p, test = kh.radius_p_values(rhos, val, per_sample_losses=[best, worse])
    assert test == "paired t" and p[1] == kh.paired_t_test(worse, best)[1]
    assert p[1] == pytest.approx(0.01535, abs=1e-5)
    assert choose_radius(rhos, val, per_sample_losses=[best, worse]) == 0.0
    # Six that differ resolve Holm's 0.05 / 2 (1/64); a radius scored
    # exactly as the best has p = 1 under either test and does not count.
    best = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0]
    worse = [b + 0.4 for b in best[:6]] + [0.0]
    samples = [best, worse, best]
    p, test = kh.radius_p_values([0.0, 0.1, 0.3], [float(np.mean(x)) for x in samples],
                                 per_sample_losses=samples)
    assert test == "signed rank" and p == [1.0, 1 / 64, 1.0]


def test_holm_rejections_against_a_hand_computation():
    from keras_hybrid.radius import holm_rejections

    # m = 4: 0.01 <= 0.05/4 rejected; 0.03 > 0.05/3: stop
    assert holm_rejections([0.01, 0.04, 0.03, 0.5], 0.05) == [True, False, False, False]
    # 0.01 <= 0.0125, 0.015 <= 0.0167, 0.02 <= 0.025, 0.5 > 0.05
    assert holm_rejections([0.02, 0.01, 0.015, 0.5], 0.05) == [True, True, True, False]
    # nan (the best radius) is no hypothesis: m = 2
    assert holm_rejections([math.nan, 0.02, 0.04], 0.05) == [False, True, True]
    with pytest.raises(ValueError, match="level=1.5"):
        holm_rejections([0.1], 1.5)


# Per-sample validation losses of three radii on six validation samples.
BEST = [1.0, 2.0, 0.5, 1.5, 3.0, 2.0]                                   # rho 0.1, mean 1.667
NOISY = [b + d for b, d in zip(BEST, [0.6, -0.4, 0.5, -0.3, 0.7, -0.2])]  # rho 0, mean 1.817
CLOSE = [b + d for b, d in zip(BEST, [0.05, 0.04, 0.06, 0.05, 0.04, 0.06])]  # rho 0.3, 1.717


def test_paired_rule_excludes_a_radius_that_is_consistently_worse():
    rhos = [0.0, 0.1, 0.3]
    samples = [NOISY, BEST, CLOSE]
    val = [float(np.mean(x)) for x in samples]
    # Hand computation. rho 0.3: d = 0.05 +- (0, .01, .01, 0, .01, .01), mean 0.05,
    # std sqrt(4e-4 / 5), t = 0.05 / (std / sqrt 6) = 13.69: p ~ 2e-5.
    # rho 0: mean 0.15, std sqrt(1.255 / 5) = 0.5010, t = 0.15 / (0.5010 / sqrt 6) = 0.7334.
    t_close = 0.05 / (math.sqrt(4e-4 / 5) / math.sqrt(6))
    t_noisy = 0.15 / (math.sqrt(1.255 / 5) / math.sqrt(6))
    assert t_close == pytest.approx(13.693, abs=1e-3) and t_noisy == pytest.approx(0.7334, abs=1e-4)
    p, test = kh.radius_p_values(rhos, val, per_sample_losses=samples, paired_test="t")
    assert test == "paired t"
    assert p[1] == 1.0
    assert p[0] == pytest.approx(_t5_upper_tail(t_noisy), rel=1e-6)
    assert p[2] == pytest.approx(_t5_upper_tail(t_close), rel=1e-4)
    assert p[0] == pytest.approx(0.2482, abs=1e-4) and p[2] < 1e-4
    # Holm (m = 2): p(0.3) <= 0.025 rejected; p(0) = 0.25 > 0.05 kept.
    result = kh.eligible_radii(rhos, val, per_sample_losses=samples, paired_test="t")
    assert result["eligible"] == [0.0, 0.1] and result["best"] == 0.1
    assert choose_radius(rhos, val, per_sample_losses=samples, paired_test="t") == 0.1
    # The default, the signed-rank test (six samples resolve 0.05 / 2):
    # rho 0.3 is worse on all six, p = 2^-6 = 1/64; rho 0: |d| ranks
    # 0.2..0.7 -> 1..6, positive at 0.6, 0.5, 0.7: W+ = 15,
    # P(W+ >= 15) = P(W+ <= 6) = (1+1+1+2+2+3+4) / 64 = 14/64. Same choice.
    p, test = kh.radius_p_values(rhos, val, per_sample_losses=samples)
    assert test == "signed rank"
    assert p == pytest.approx([14 / 64, 1.0, 1 / 64], rel=1e-12)
    assert choose_radius(rhos, val, per_sample_losses=samples) == 0.1
    # The flat 25 % slack accepts 0.3 (3 % above the best), so did the former rule.
    assert choose_radius(rhos, val, rule="relative") == 0.3
    # Unpaired, the same losses cannot separate 0.3 from the best (both
    # standard errors are ~0.36): pairing is what rejects it.
    se = [float(np.std(x, ddof=1) / math.sqrt(6)) for x in samples]
    assert choose_radius(rhos, val, standard_errors=se) == 0.3
    p_unpaired, test = kh.radius_p_values(rhos, val, standard_errors=se)
    assert test == "unpaired z"
    z = (val[2] - val[1]) / math.hypot(se[2], se[1])
    assert p_unpaired[2] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)


def test_holm_runs_over_the_radii_other_than_the_best():
    # Unpaired test, se 0 for the best and 0.1 for the others:
    # z = 2.0537 (p = 0.02) and z = 1.7507 (p = 0.04). Holm over the two
    # comparisons rejects both (0.02 <= 0.025, 0.04 <= 0.05); counting the
    # best radius as a third hypothesis would reject neither (0.02 > 0.0167).
    rhos, val = [0.0, 0.1, 0.3], [1.0, 1.20537, 1.17507]
    result = kh.eligible_radii(rhos, val, standard_errors=[0.0, 0.1, 0.1])
    assert result["p_values"][1] == pytest.approx(0.02, abs=1e-5)
    assert result["p_values"][2] == pytest.approx(0.04, abs=1e-5)
    assert result["eligible"] == [0.0] and result["test"] == "unpaired z"
    # At level 0.03: 0.02 > 0.03 / 2, nothing is rejected
    assert kh.eligible_radii(rhos, val, standard_errors=[0.0, 0.1, 0.1],
                             level=0.03)["eligible"] == [0.0, 0.1, 0.3]


def test_paired_rule_margin_is_a_fraction_of_the_gain_over_physics():
    rhos = [0.0, 0.1, 0.3]
    samples = [NOISY, BEST, CLOSE]
    val = [float(np.mean(x)) for x in samples]
    # physics alone 2.667: the best radius gains 1.0 over it; 10 % of that
    # (0.1) exceeds the 0.05 by which 0.3 is worse: not rejected any more
    result = kh.eligible_radii(rhos, val, reference_loss=val[1] + 1.0,
                               per_sample_losses=samples, margin=0.1, paired_test="t")
    assert result["eligible"] == [0.0, 0.1, 0.3]
    t = (0.05 - 0.1) / (math.sqrt(4e-4 / 5) / math.sqrt(6))
    assert result["p_values"][2] == pytest.approx(1.0 - _t5_upper_tail(-t), rel=1e-9)
    # signed rank: every d - 0.1 is negative, W+ = 0, p = 1
    result = kh.eligible_radii(rhos, val, reference_loss=val[1] + 1.0,
                               per_sample_losses=samples, margin=0.1)
    assert result["eligible"] == [0.0, 0.1, 0.3] and result["p_values"][2] == 1.0
    # a 1 % margin (0.01) is less than 0.05: rejected
    assert choose_radius(rhos, val, reference_loss=val[1] + 1.0, per_sample_losses=samples,
                         margin=0.01) == 0.1
    # the physics part alone still caps the eligible set: rho 0 (1.817), which
    # the test keeps, is above 1.7
    result = kh.eligible_radii(rhos, val, reference_loss=1.7, per_sample_losses=samples)
    assert result["eligible"] == [0.1] and result["limit"] == 1.7


def test_paired_rule_bad_input_names_the_argument():
    rhos, val = [0.0, 0.1], [1.0, 1.1]
    with pytest.raises(ValueError, match="rule='ttest'"):
        choose_radius(rhos, val, rule="ttest")
    with pytest.raises(ValueError, match="level=0.0"):
        choose_radius(rhos, val, standard_errors=[0.1, 0.1], level=0.0)
    with pytest.raises(ValueError, match="margin=1.0"):
        choose_radius(rhos, val, standard_errors=[0.1, 0.1], margin=1.0)
    with pytest.raises(ValueError, match="paired_test='wilcoxon'"):
        choose_radius(rhos, val, standard_errors=[0.1, 0.1], paired_test="wilcoxon")
    with pytest.raises(ValueError, match="len\\(per_sample_losses\\)=1"):
        choose_radius(rhos, val, per_sample_losses=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="Received: lengths \\[2, 3\\]"):
        choose_radius(rhos, val, per_sample_losses=[[1.0, 2.0], [1.0, 2.0, 3.0]])
    # A NaN per-sample loss made the rank test answer p = 1 ("not worse").
    for test in (kh.signed_rank_test, kh.paired_t_test):
        with pytest.raises(ValueError, match=r"`losses` must be finite.*losses\[1\]=nan"):
            test([1.0, math.nan, 3.0], [1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match=r"`best_losses` must be finite.*best_losses\[0\]=inf"):
            test([1.0, 2.0, 3.0], [math.inf, 2.0, 3.0])
    # Without per-sample losses or standard errors there is nothing to test:
    # the relative rule decides.
    result = kh.eligible_radii(rhos, val)
    assert result["rule"] == "relative" and result["p_values"] is None
    assert result["eligible"] == [0.0, 0.1]


def _row(rho, seed, val, k, train=1.0):
    return {"rho": rho, "seed": seed, "constants": {"k": k}, "train_loss": train,
            "val_loss": val, "net_share": 0.1}


def test_path_summary_choice_and_stability_from_rows():
    rows = [
        _row(0.0, 0, 1.00, 0.50), _row(0.0, 1, 1.20, 0.70),   # mean val 1.10, k 0.60
        _row(0.1, 0, 1.00, 0.98), _row(0.1, 1, 1.00, 1.00),   # mean val 1.00, k 0.99
        _row(1.0, 0, 1.20, 1.01), _row(1.0, 1, 1.20, 1.01),   # mean val 1.20, k 1.01
        _row(3.0, 0, 9.00, 3.00), _row(3.0, 1, 9.00, 3.00),   # underfits
    ]
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.5}, "train_loss": 5.0,
               "val_loss": 5.0, "net_share": 0.0}
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    np.testing.assert_allclose([s["val_loss"] for s in path.summary], [1.1, 1.0, 1.2, 9.0])
    np.testing.assert_allclose(path.summary[0]["constants"]["k"], 0.60)
    np.testing.assert_allclose(path.summary[0]["constants_std"]["k"], 0.10)
    assert path.chosen == 1.0
    assert path.eligible == [0.0, 0.1, 1.0]
    # k over the eligible radii: 0.60, 0.99, 1.01 -> spread 0.41 / 0.99
    np.testing.assert_allclose(path.spread["k"], 0.41 / 0.99, rtol=1e-6)
    assert path.stable == {"k": False}
    assert path.network_needed
    assert "<- chosen" in str(path) and "NOT stable" in str(path)
    # Without the plain fit the constant is stable over 0.1 and 1.0.
    stable = RadiusPath(rows[2:], physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    assert stable.eligible == [0.1, 1.0] and stable.stable == {"k": True}
    # These rows share one training loss and network share: the radii did
    # not change the fit, so they test nothing.
    assert not stable.probed and stable.fit_change == {"train_loss": 0.0, "net_share": 0.0}
    assert "barely change the fit" in str(stable)
    shares = {0.1: 0.10, 1.0: 0.08, 3.0: 0.0}
    moved = [dict(row, net_share=shares[row["rho"]]) for row in rows[2:]]
    moved = RadiusPath(moved, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    np.testing.assert_allclose(moved.fit_change["net_share"], 0.02 / 0.09)
    assert moved.probed and "barely change" not in str(moved)


def _sample_row(rho, seed, losses, k):
    row = _row(rho, seed, float(np.mean(losses)), k)
    row["val_losses"] = list(losses)
    row["val_se"] = float(np.std(losses, ddof=1) / math.sqrt(len(losses)))
    return row


def test_path_uses_the_paired_rule_and_round_trips():
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.5}, "train_loss": 5.0,
               "val_loss": 5.0, "net_share": 0.0}
    rows = [_sample_row(0.0, 0, NOISY, 0.97), _sample_row(0.1, 0, BEST, 0.99),
            _sample_row(0.3, 0, CLOSE, 0.60)]
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    assert path.rule == "paired" and path.rule_used == "paired" and path.test == "signed rank"
    # 0.3 is rejected (see the pure test), so k over {0, 0.1} is stable
    assert path.eligible == [0.0, 0.1] and path.chosen == 0.1
    assert path.stable == {"k": True}
    np.testing.assert_allclose(path.spread["k"], 0.02 / 0.98, rtol=1e-9)
    assert path.p_values[1] == 1.0 and path.p_values[2] == pytest.approx(1 / 64)
    assert "one-sided signed rank test" in str(path)
    text = str(path)
    assert "not significantly worse" in text and "Holm" in text and "0.3: " in text
    # The former rule keeps 0.3, and k is not stable over it.
    relative = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {}, rule="relative")
    assert relative.eligible == [0.0, 0.1, 0.3] and relative.stable == {"k": False}
    assert relative.p_values is None and "standard errors" in str(relative)
    # Round trip through a JSON-ready dict, settings included.
    again = RadiusPath.from_dict(json.loads(json.dumps(path.to_dict())))
    assert (again.rule, again.level, again.margin, again.paired_test) == (
        "paired", 0.05, 0.0, "auto")
    assert again.eligible == path.eligible and again.p_values == path.p_values
    t_test = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {}, paired_test="t")
    again = RadiusPath.from_dict(t_test.to_dict())
    assert again.test == "paired t" and again.p_values == t_test.p_values
    # A path saved before the signed-rank test is read with the t test.
    before_ranks = path.to_dict()
    del before_ranks["paired_test"]
    assert RadiusPath.from_dict(before_ranks).test == "paired t"
    wider = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {}, margin=0.5, level=0.01)
    again = RadiusPath.from_dict(wider.to_dict())
    assert (again.margin, again.level) == (0.5, 0.01) and again.eligible == [0.0, 0.1, 0.3]
    # A path saved before the paired rule is read with the relative rule.
    old = path.to_dict()
    for key in ("rule", "level", "margin", "paired_test", "rule_used", "test", "p_values"):
        del old[key]
    assert RadiusPath.from_dict(old).eligible == [0.0, 0.1, 0.3]
    # A single eligible radius: the path suggests radii next to it.
    lone = RadiusPath(rows[1:], physics, kh.SAM(), 0.25, 0.05, {}, {})
    assert lone.eligible == [0.1] and lone.stable == {"k": False}
    # neighbours 0.3 above (sqrt(0.1 * 0.3) = 0.173) and none below: 0.17
    assert lone.refine_rhos() == [0.17] and "fit the radii [0.17]" in str(lone)
    # ... and does not call its constant "NOT stable" on a spread of one fit.
    assert "k: stability unknown" in str(lone) and "NOT stable" not in str(lone)
    assert path.refine_rhos() == [0.033, 0.17]   # 0.1 / 3 below (neighbour 0)
    assert RadiusPath(rows[:1], physics, kh.SAM(), 0.25, 0.05, {}, {}).refine_rhos() == []
    # Seeds are averaged per sample before pairing.
    two = rows + [_sample_row(0.0, 1, NOISY, 0.97), _sample_row(0.1, 1, BEST, 0.99),
                  _sample_row(0.3, 1, CLOSE, 0.60)]
    assert RadiusPath(two, physics, kh.SAM(), 0.25, 0.05, {}, {}).eligible == [0.0, 0.1]


def test_path_says_when_physics_alone_is_enough():
    rows = [_row(0.0, 0, 1.0, 1.0), _row(0.3, 0, 1.1, 1.0)]
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.0}, "train_loss": 0.95,
               "val_loss": 0.9, "net_share": 0.0}
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {})
    assert not path.network_needed
    assert path.converged   # training loss 1.0 within 10 % of the physics part's 0.95
    assert path.chosen == 0.0
    assert "network may not be needed" in str(path)
    # The chosen line does not claim the rule's cap, which no radius met.
    assert "chosen: rho = 0.0 (the radius of lowest validation loss: no radius" in str(path)
    assert "not above the physics part alone" not in str(path)


def test_path_says_when_its_fits_have_not_converged():
    # The hybrid contains the physics part (zero network output), so a
    # lowest training loss far above the physics part's is an optimization
    # failure, not a sign that the network is not needed.
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.0}, "train_loss": 1.0,
               "val_loss": 1.0, "net_share": 0.0}
    rows = [_row(0.0, 0, 80.0, 0.8, train=70.0), _row(0.3, 0, 12.0, 0.9, train=8.0),
            _row(1.0, 0, math.inf, 0.7, train=math.inf)]
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {})
    assert not path.converged and not path.network_needed
    text = str(path)
    assert "lowest training loss 8 against 1" in text and "have not converged" in text
    assert "network may not be needed" not in text
    assert RadiusPath.from_dict(path.to_dict()).converged is False
    # Within the slack (10 %) the fits count as converged; no reference, no verdict.
    rows[1] = _row(0.3, 0, 12.0, 0.9, train=1.09)
    assert RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {}).converged
    assert RadiusPath(rows, None, kh.SAM(), 0.25, 0.05, {}, {}).converged


def test_path_convergence_check_takes_negative_losses():
    # (1 + slack) * reference: fits better than a physics part at -2
    # (cosine similarity, Gaussian NLL) read as not converged.
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.0}, "train_loss": -2.0,
               "val_loss": -2.0, "net_share": 0.0}
    # The slack is 0.1 * |-2|: converged down to -1.8.
    for train, converged in ((-2.1, True), (-1.81, True), (-1.79, False)):
        rows = [_row(0.0, 0, -2.1, 1.0, train=train), _row(0.1, 0, -2.1, 1.0, train=train)]
        path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {}, rule="relative")
        assert path.converged is converged


def test_path_prints_percents_without_rounding_them_away():
    # 0.004 was printed "0%" ("relative spread 0.21%, threshold 0%").
    rows = [_sample_row(0.0, 0, BEST, 0.99), _sample_row(0.1, 0, BEST, 0.9905)]
    rows[1]["net_share"] = 0.2
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.5}, "train_loss": 5.0,
               "val_loss": 5.0, "net_share": 0.0}
    text = str(RadiusPath(rows, physics, kh.SAM(), 0.25, 0.004, {}, {}, margin=0.004))
    assert "not significantly worse by more than 0.4% of the gain" in text
    assert "(relative spread 0.05%, threshold 0.4%)" in text
    text = str(RadiusPath(rows, physics, kh.SAM(), 0.004, 0.05, {}, {}, rule="relative"))
    assert "the best plus the larger of 0.4% of its magnitude and 2 standard errors" in text
    from keras_hybrid._plotting import percent

    assert [percent(v) for v in (0.95, 0.999, 0.975, 0.004, 0.07)] == [
        "95%", "99.9%", "97.5%", "0.4%", "7%"]


def test_a_path_names_the_fits_that_diverged():
    # One diverged seed per radius: "no fit has a finite validation loss
    # (every fit diverged)", with 4 of 6 fits finite.
    rows = [_row(rho, seed, val, 1.0, train=val) for rho in (0.0, 0.1)
            for seed, val in enumerate([1.0, 1.01, math.nan])]
    path = RadiusPath(rows, None, kh.SAM(), 0.25, 0.05, {}, {})
    assert path.chosen is None and path.eligible == []
    assert ("chosen: none: a radius with a diverged fit is not chosen, and every radius has one "
            "(non-finite validation loss: rho = 0 seed 2, rho = 0.1 seed 2; 4 of 6 fits are "
            "finite), so `best_model` is None.") in str(path)
    # With a radius left to choose, the table's nan is explained too.
    rows[2]["val_loss"] = 1.02
    path = RadiusPath(rows, None, kh.SAM(), 0.25, 0.05, {}, {})
    assert path.chosen == 0.0
    assert ("diverged (non-finite validation loss; a radius with one is not chosen): "
            "rho = 0.1 seed 2") in str(path)


# -- the path on a real fit -----------------------------------------------------


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    current = rng.uniform(0.5, 2.0, (n, 1)).astype("float32")
    voltage = 4.7 * current + 0.3 * np.sin(3.0 * current) + 0.01 * rng.standard_normal((n, 1))
    return current, voltage.astype("float32")


def _builder(calls):
    def build(sam):
        calls.append(sam)
        current = keras.Input((1,))
        physics = kh.ScientificLayer(
            ohm, [kh.PhysicalConstant("R", 2.0, unit="ohm", constraint="positive")])(current)
        hidden = keras.layers.Dense(8, activation="tanh")(current)
        net = keras.layers.Dense(1, name="correction_out")(hidden)
        model = kh.HybridModel(current, keras.layers.Add()([physics, net]), sam=sam)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        return model
    return build


def test_radius_path_fits_each_radius_and_the_physics_alone():
    x, y = _data()
    calls = []
    path = kh.radius_path(_builder(calls), x, y, rhos=[0.3, 0.0], epochs=15, batch_size=16)
    # Radii sorted; plain training gets sam=None, the others the template at rho.
    assert path.rhos == [0.0, 0.3]
    assert calls[0] is None and calls[1] == kh.SAM(rho=0.3) and calls[2] is None
    assert len(path.rows) == 2 and path.physics_only is not None
    assert path.units == {"R": "ohm"}
    # The choice is the paired rule applied to the recorded per-sample losses.
    assert all(np.isfinite(s["val_se"]) and s["val_se"] > 0 for s in path.summary)
    assert all(len(row["val_losses"]) == 12 for row in path.rows)   # 20 % of 60
    # Each fit records where its constants started (the builder's 2.0).
    assert all(row["initial_constants"] == {"R": pytest.approx(2.0)} for row in path.rows)
    for row in path.rows:
        np.testing.assert_allclose(np.mean(row["val_losses"]), row["val_loss"], rtol=1e-4)
    assert path.test == "signed rank"   # 12 samples resolve Holm's 0.05
    expected = choose_radius(path.rhos, [s["val_loss"] for s in path.summary], 0.25,
                             path.physics_only["val_loss"],
                             per_sample_losses=[row["val_losses"] for row in path.rows])
    assert path.chosen == expected
    assert path.best_model.sam == (None if expected == 0 else kh.SAM(rho=0.3))
    # Physics alone: the least-squares slope of a line through the origin on
    # the training part (the network is zero and stays zero).
    assert path.physics_only["net_share"] == 0.0
    for row in path.rows:
        assert 0.0 <= row["net_share"] <= 10.0 and math.isfinite(row["val_loss"])
    json_ready = path.to_dict()
    assert json_ready["chosen"] == path.chosen and len(json_ready["rows"]) == 2


def test_physics_only_reference_is_the_least_squares_fit():
    x, y = _data(n=50)
    path = kh.radius_path(_builder([]), x, y, rhos=[0.0], epochs=150, batch_size=50,
                          validation_split=0.2)
    # Same split as radius_path: random permutation with split_seed=0.
    order = np.random.default_rng(0).permutation(50)
    train = np.sort(order[10:])
    xt, yt = x[train, 0].astype("float64"), y[train, 0].astype("float64")
    slope = float(xt @ yt / (xt @ xt))
    np.testing.assert_allclose(path.physics_only["constants"]["R"], slope, rtol=2e-3)
    rss = float(np.mean((yt - slope * xt) ** 2))
    np.testing.assert_allclose(path.physics_only["train_loss"], rss, rtol=2e-2)


def test_net_share_is_zero_only_for_a_zero_network():
    from keras_hybrid.radius import _net_share

    x, _ = _data(n=20)
    model = _builder([])(None)
    for v in model.trainable_variables:
        if not kh.is_physical_variable(v):
            v.assign(np.zeros(v.shape, "float32"))
    assert _net_share(model, x, 20) == 0.0
    # a correction of 1 V on top of R * I (R = 2): share = ||1|| / ||2 I + 1||
    last = model.get_layer("correction_out")
    last.bias.assign(np.ones((1,), "float32"))
    expected = np.linalg.norm(np.ones(20)) / np.linalg.norm(2.0 * x[:, 0] + 1.0)
    np.testing.assert_allclose(_net_share(model, x, 20), expected, rtol=1e-5)
    # and the weights are restored after the computation
    np.testing.assert_allclose(last.bias.numpy(), [1.0])


def test_radius_path_splits_and_uses_sample_weights():
    x, y = _data()
    w = np.random.default_rng(5).uniform(0.2, 3.0, len(x)).astype("float32")
    path = kh.radius_path(_builder([]), x, y, sample_weight=w, rhos=[0.0], epochs=5,
                          batch_size=16)
    model = path.best_model
    # The same random split as without weights, the weights going with their samples.
    (xt, yt, wt), (xv, yv, wv) = fitting._split(x, y, w, 0.2, 0)
    row = path.rows[0]
    assert row["val_loss"] == pytest.approx(
        model.evaluate(xv, yv, sample_weight=wv, verbose=0), rel=1e-5)
    assert row["train_loss"] == pytest.approx(
        model.evaluate(xt, yt, sample_weight=wt, verbose=0), rel=1e-5)
    # Per-sample losses are weighted: their mean is the validation loss.
    assert np.mean(row["val_losses"]) == pytest.approx(row["val_loss"], rel=1e-5)
    residual = (model.predict(xv, verbose=0) - yv)[:, 0]
    np.testing.assert_allclose(row["val_losses"], wv * residual**2, rtol=1e-4)
    # Weights given with `validation_data` are used there.
    three = kh.radius_path(_builder([]), xt, yt, sample_weight=wt, validation_data=(xv, yv, wv),
                           rhos=[0.0], epochs=5, batch_size=16)
    assert three.rows[0]["val_loss"] == pytest.approx(row["val_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="one finite weight >= 0 per sample of `x` \\(60\\)"):
        kh.radius_path(_builder([]), x, y, sample_weight=w[:10], rhos=[0.0], epochs=1)


def test_radius_path_rejects_bad_input():
    x, y = _data(n=10)

    def uncompiled(sam):
        inputs = keras.Input((1,))
        return kh.HybridModel(inputs, keras.layers.Dense(1)(inputs), sam=sam)

    def ignores_sam(sam):
        inputs = keras.Input((1,))
        model = kh.HybridModel(inputs, keras.layers.Dense(1)(inputs), sam=None)
        model.compile(optimizer="sgd", loss="mse")
        return model

    with pytest.raises(ValueError, match="compiled"):
        kh.radius_path(uncompiled, x, y, rhos=[0.0], epochs=1)
    with pytest.raises(ValueError, match="must train with the `sam`"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.1], epochs=1)
    with pytest.raises(ValueError, match="rhos"):
        kh.radius_path(ignores_sam, x, y, rhos=[-0.1], epochs=1)
    with pytest.raises(ValueError, match="distinct"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.1, 0.1], epochs=1)
    with pytest.raises(ValueError, match="validation_split=0.0"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.0], validation_split=0.0, epochs=1)
    # One validation sample cannot be compared sample by sample: refused
    # before any fit, not after six of them.
    with pytest.raises(ValueError, match="leaves 1 validation sample of 10.*validation_split=0.1"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.0], validation_split=0.1, epochs=1)
    with pytest.raises(ValueError, match="at least 2 samples.*Received: 1 sample"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.0], validation_data=(x[:1], y[:1]), epochs=1)
    with pytest.raises(TypeError, match="build_model=3"):
        kh.radius_path(3, x, y)
    with pytest.raises(ValueError, match="epochs=0"):
        kh.radius_path(ignores_sam, x, y, epochs=0)
    with pytest.raises(ValueError, match="rule='anova'"):
        kh.radius_path(ignores_sam, x, y, rule="anova")
    with pytest.raises(ValueError, match="level=1.0"):
        kh.radius_path(ignores_sam, x, y, level=1.0)
    with pytest.raises(ValueError, match="margin=1.5"):
        kh.radius_path(ignores_sam, x, y, margin=1.5)
    with pytest.raises(ValueError, match="paired_test='z'"):
        kh.radius_path(ignores_sam, x, y, paired_test="z")
    # Targets shorter than the inputs failed with an IndexError inside the
    # split (and longer ones were silently cut).
    with pytest.raises(ValueError, match=r"`x` and `y` must have the same number of samples.*x: 10, y: 8"):
        kh.radius_path(ignores_sam, x, y[:8], epochs=1)
    with pytest.raises(ValueError, match=r"`validation_data\[0\]` and `validation_data\[1\]`.*: 4, .*: 3"):
        kh.radius_path(ignores_sam, x, y, validation_data=(x[:4], y[:3]), epochs=1)
    # A NaN target made every fit's loss NaN: the path chose no radius and
    # blamed diverged fits.
    bad = y.copy()
    bad[4, 0] = np.nan
    with pytest.raises(ValueError, match=r"`y` contains 1 non-finite .* y\[4, 0\]=nan"):
        kh.radius_path(ignores_sam, x, bad, epochs=1)
    with pytest.raises(ValueError, match=r"`validation_data\[1\]` contains 1 non-finite"):
        kh.radius_path(ignores_sam, x, y, validation_data=(x[:5], bad[:5]), epochs=1)
    with pytest.raises(ValueError, match=r"`x` contains 1 non-finite"):
        kh.radius_path(ignores_sam, np.where(bad > 0, x, np.inf), y, epochs=1)


def test_radius_path_compares_one_model_across_radii():
    # A builder whose constants change with the radius failed with a
    # KeyError after every fit had run; it is refused at the first model
    # that differs. A network that changes size is warned about.
    x, y = _data(n=12)
    calls = []

    def build(sam, name="R", hidden=8):
        calls.append(sam)
        current = keras.Input((1,))
        physics = kh.ScientificLayer(ohm_any_name, [kh.PhysicalConstant(name, 2.0, constraint="positive")],
                                     name="law")(current)
        net = keras.layers.Dense(1)(keras.layers.Dense(hidden, activation="tanh")(current))
        model = kh.HybridModel(current, keras.layers.Add()([physics, net]), sam=sam)
        model.compile(optimizer="adam", loss="mse")
        return model

    renamed = lambda sam: build(sam, name="R" if sam is None else "R2")  # noqa: E731
    with pytest.raises(ValueError, match=r"same physical constants .* \['R'\] at rho=0.0 and "
                                         r"\['R2'\] at rho=0.1"):
        kh.radius_path(renamed, x, y, rhos=[0.0, 0.1, 0.3], validation_split=0.5, epochs=1)
    assert len(calls) == 2
    wider = lambda sam: build(sam, hidden=8 if sam is None else 16)  # noqa: E731
    with pytest.warns(UserWarning, match=r"network of 49 weights at rho=0.1 but 25 at rho=0.0"):
        kh.radius_path(wider, x, y, rhos=[0.0, 0.1], validation_split=0.5, epochs=1)


def test_path_warns_of_an_eligible_radius_worse_on_most_points():
    # Radius 0.3 is worse than the best (0) on 10 of 12 points, by a
    # little, and better on two: the paired t test keeps it (t = 1.48,
    # p about 0.08), a sign test does not (P(X >= 10 | 12, 1/2) = 0.019).
    best = [1.0] * 12
    rival = [1.05] * 10 + [0.9, 0.9]
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.5}, "train_loss": 5.0,
               "val_loss": 5.0, "net_share": 0.0}
    rows = [_sample_row(0.0, 0, best, 1.0), _sample_row(0.3, 0, rival, 0.9)]
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    assert path.eligible == [0.0, 0.3] and path.chosen == 0.3
    assert path.mostly_worse() == [(0.3, 10, 12)]
    assert "rho = 0.3 is eligible although it is worse than the best radius on 10 of 12" in str(path)
    # At level 0.01 the sign test does not flag it.
    strict = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {}, level=0.01)
    assert strict.mostly_worse() == [] and "although it is worse" not in str(strict)


def test_mostly_worse_says_only_what_was_measured():
    # Worse by 0.01 on 10 of 12 points and better by 0.05 on two: no
    # excess on average, yet the text said "its excess loss sits in a few
    # points, where the paired t test has little power".
    best = np.linspace(1, 2, 12)
    rival = best + 0.01
    rival[:2] -= 0.06
    rows = [_sample_row(0.0, 0, best, 1.0), _sample_row(0.1, 0, rival, 1.0)]
    path = RadiusPath(rows, None, kh.SAM(), 0.25, 0.05, {}, {}, paired_test="t")
    p = path.p_values[1]
    assert p == pytest.approx(0.5, abs=1e-6)
    assert (f"rho = 0.1 is eligible although it is worse than the best radius on 10 of 12 "
            f"validation points (sign test below level 0.05); the paired t test with Holm's "
            f"correction does not reject it (p = {p:.2g})") in str(path).splitlines()
    assert "little power" not in str(path)


def test_path_warns_of_an_eligible_radius_worse_on_average():
    # Radius 0.3 is better than the best (0) on 16 of 20 points by 0.01 and
    # worse on 4 by 2.0: W+ = 17 + 18 + 19 + 20 = 74 of 210, so the
    # signed-rank test keeps it, while its mean is 0.392 higher:
    # sd 0.8249, t = 0.392 / (0.8249 / sqrt 20) = 2.125, p = 0.023.
    best = list(np.linspace(1.0, 2.0, 20))
    rival = [b - 0.01 for b in best[:16]] + [b + 2.0 for b in best[16:]]
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.5}, "train_loss": 5.0,
               "val_loss": 5.0, "net_share": 0.0}
    rows = [_sample_row(0.0, 0, best, 1.0), _sample_row(0.3, 0, rival, 0.9)]
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    assert path.test == "signed rank" and path.eligible == [0.0, 0.3] and path.chosen == 0.3
    [(rho, p)] = path.worse_on_average()
    assert rho == 0.3 and p == pytest.approx(kh.paired_t_test(rival, best)[1])
    assert p == pytest.approx(0.023, abs=1e-3)
    assert "rho = 0.3 is eligible although its mean validation loss is higher" in str(path)
    # Under the t test the rule itself rejects it, and nothing is to be said.
    t_rule = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {}, paired_test="t")
    assert t_rule.eligible == [0.0] and t_rule.worse_on_average() == []
    # At level 0.01 neither the rule nor the warning fires.
    strict = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {}, level=0.01)
    assert strict.eligible == [0.0, 0.3] and strict.worse_on_average() == []


def test_radius_path_keeps_the_best_finite_seed_of_a_radius(monkeypatch):
    # A diverged first seed set the loss to beat to nan, which no later
    # seed's loss is below: the diverged model was kept.
    x, y = _data(n=20)
    built = []

    def build(sam):
        model = _builder([])(sam)
        if not built:   # diverged: a nan weight
            kernel = model.get_layer("correction_out").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))
        built.append(model)
        return model

    kept = {}
    monkeypatch.setattr(fitting, "RadiusPath",
                        lambda *args, **kwargs: kept.update(args[6]) or RadiusPath(*args, **kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = kh.radius_path(build, x, y, rhos=[0.0], seeds=2, epochs=2, batch_size=16,
                              physics_only=False)
    assert math.isnan(path.rows[0]["val_loss"]) and math.isfinite(path.rows[1]["val_loss"])
    assert kept[0.0] is built[1]


def test_quiet_retracing_drops_only_the_retracing_warning(caplog):
    import logging

    from keras_hybrid._logging import quiet_retracing

    logger = logging.getLogger("tensorflow")
    retracing = "5 out of the last 7 calls to <function f> triggered tf.function retracing."
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        with quiet_retracing():
            logger.warning(retracing)
            logger.warning("another warning")
        logger.warning(retracing)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another warning", retracing]   # dropped inside only


def test_per_sample_losses_of_a_model_with_several_outputs():
    # A dict of two outputs with their own losses and loss weights: the
    # per-sample losses (summed over the outputs) average to `evaluate`'s
    # loss, and the radius path runs on such a model.
    from keras_hybrid.radius.fitting import _net_share, _per_sample_losses

    x, y = _data(n=12)

    def build(sam):
        inputs = keras.Input((1,))
        physics = kh.ScientificLayer(ohm, [kh.PhysicalConstant("R", 2.0, constraint="positive")])(inputs)
        net = keras.layers.Dense(1)(keras.layers.Dense(8, activation="tanh")(inputs))
        # Output layers named as the dict keys (Keras 3.4 matches losses by layer name).
        model = kh.HybridModel(inputs, {"a": keras.layers.Add(name="a")([physics, net]),
                                        "b": keras.layers.Dense(1, name="b")(inputs)}, sam=sam)
        model.compile(optimizer="adam", loss={"a": "mse", "b": "mae"}, loss_weights={"a": 2.0, "b": 0.5})
        return model

    model = build(None)
    targets = {"a": y, "b": 3.0 * y}
    weights = np.linspace(0.5, 1.5, 12)
    per_sample = _per_sample_losses(model, x, targets, 12, weights)
    loss = model.evaluate(x, targets, sample_weight=weights, verbose=0, return_dict=True)["loss"]
    assert per_sample.shape == (12,)
    np.testing.assert_allclose(per_sample.mean(), loss, rtol=1e-5)
    pred = model.predict(x, verbose=0)
    expected = 2.0 * weights * (pred["a"] - y)[:, 0] ** 2 + 0.5 * weights * np.abs(pred["b"] - 3 * y)[:, 0]
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5)
    assert 0.0 < _net_share(model, x, 12) < 1.0
    path = kh.radius_path(build, x, targets, rhos=[0.0, 0.1], epochs=2, batch_size=12, physics_only=False)
    assert all(len(row["val_losses"]) == 2 for row in path.rows)

    # Dict targets for a list of outputs pair by output name, as in Keras.
    inputs = keras.Input((1,))
    listed = kh.HybridModel(inputs, [keras.layers.Dense(1, name="b")(inputs),
                                     keras.layers.Dense(1, name="a")(inputs)], sam=None)
    listed.compile(optimizer="adam", loss=["mae", "mse"])
    per_sample = _per_sample_losses(listed, x, targets, 12)
    loss = listed.evaluate(x, targets, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(per_sample.mean(), loss, rtol=1e-5)


def test_a_path_whose_fits_all_diverge_says_so():
    x, y = _data(n=20)

    def build(sam):
        model = _builder([])(sam)
        model.compile(optimizer=keras.optimizers.SGD(1e4), loss="mse")   # diverges
        return model

    with pytest.warns(UserWarning):
        path = kh.radius_path(build, x, y, rhos=[0.0, 0.1], epochs=3, batch_size=16, physics_only=False)
    assert path.chosen is None and path.best_model is None
    assert "chosen: none: no fit has a finite validation loss" in str(path)
    with pytest.raises(TypeError, match=r"`model` must be a fitted Keras model.*best_model=None"):
        kh.constant_uncertainty(path.best_model, x, y)
    with pytest.raises(TypeError, match=r"`model` must be a fitted Keras model"):
        kh.profile_likelihood(path.best_model, "R", 5, x, y, epochs=1)


def test_a_path_whose_radii_all_diverged_beside_a_fitted_physics_part():
    rows = [_row(rho, 0, math.nan, math.nan, train=math.nan) for rho in (0.0, 0.1)]
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.5}, "train_loss": 1.0,
               "val_loss": 1.0, "net_share": 0.0}
    text = str(RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {}))
    # It read "lowest training loss inf".
    assert "lowest training loss none finite against 1" in text


@keras.saving.register_keras_serializable(package="test_radius")
def decay_per_sample(t, constants):
    return constants["A"] * keras.ops.exp(-constants["k"] * t)


def test_an_excluded_encoder_of_per_sample_constants_is_part_of_the_physics_reference():
    # k per sample from an encoder of a covariate, no correction network:
    # the physics-only reference zeroed the encoder (every sample's k at
    # its initial value) and counted it in the network share.
    rng = np.random.default_rng(0)
    covariate = rng.uniform(0, 1, (60, 1)).astype("float32")
    t = rng.uniform(0, 3, (60, 1)).astype("float32")
    y = (2.0 * np.exp(-(0.3 + 0.5 * covariate) * t)).astype("float32")

    def build(sam):
        t_in, c_in = keras.Input((1,)), keras.Input((1,))
        k = keras.layers.Dense(1, activation="softplus", name="encoder")(c_in)
        law = kh.ScientificLayer(decay_per_sample, [kh.PhysicalConstant("A", 1.5),
                                                    kh.PhysicalConstant("k", 0.5, trainable=False)])
        model = kh.HybridModel([t_in, c_in], law(t_in, constants={"k": k}), sam=sam)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        return model

    path = kh.radius_path(build, [t, covariate], y, rhos=(0.0, 0.1), epochs=20, batch_size=20,
                          sam=kh.SAM(rho=0.1, exclude=("encoder",)))
    assert [row["net_share"] for row in path.rows] == [0.0, 0.0]
    # k is supplied per sample: its placeholder value is not judged.
    assert path.untrained == ["k"] and "k" not in path.stable and "k" not in path.unmoved
    assert "k: not trained (frozen, or supplied per sample" in str(path)
    assert kh.RadiusPath.from_dict(path.to_dict()).untrained == ["k"]
    plain = path.rows[0]
    # Nothing zeroed: the reference is the plain fit itself.
    assert path.physics_only["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)
    assert path.physics_only["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-5)
