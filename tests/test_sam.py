"""The SAM perturbation as pure functions, checked against NumPy."""

import numpy as np
import pytest

from keras_hybrid import SAM, grouped_perturbation, sam_perturbation
from keras_hybrid.sam import NEURAL, PHYSICAL


def _np(values):
    return [None if v is None else np.asarray(v) for v in values]


def test_sam_perturbation_matches_formula():
    g = [np.array([3.0, 0.0], "float32"), np.array([[4.0]], "float32")]
    e = _np(sam_perturbation(g, rho=0.5))
    # ||g|| = 5 -> e = 0.5 * g / 5
    np.testing.assert_allclose(e[0], [0.3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(e[1], [[0.4]], rtol=1e-6)


def test_adaptive_perturbation_matches_asam_formula():
    g = [np.array([1.0, -2.0], "float32")]
    w = [np.array([0.5, 3.0], "float32")]
    eta = 0.1
    t = np.abs(w[0]) + eta
    expected = 0.2 * t**2 * g[0] / np.linalg.norm(t * g[0])
    e = _np(sam_perturbation(g, w, rho=0.2, adaptive=True, eta=eta))
    np.testing.assert_allclose(e[0], expected, rtol=1e-6)
    # The scaled perturbation T^-1 e lies on the sphere of radius rho.
    np.testing.assert_allclose(np.linalg.norm(e[0] / t), 0.2, rtol=1e-6)


def test_adaptive_kernels_only_matches_reference_asam():
    # Reference ASAM (Kwon et al.): T = |w| + eta for weight matrices only;
    # biases (and scalars such as raw physical constants) keep T = 1.
    kernel = np.array([[0.5, -3.0], [0.0, 1.0]], "float32")
    bias = np.array([2.0, -1.0], "float32")
    g_kernel = np.array([[1.0, -2.0], [0.5, 0.25]], "float32")
    g_bias = np.array([0.3, -0.4], "float32")
    eta, rho = 0.1, 0.2
    t = np.abs(kernel) + eta
    norm = np.sqrt(np.sum((t * g_kernel) ** 2) + np.sum(g_bias**2))
    e = _np(sam_perturbation([g_kernel, g_bias], [kernel, bias], rho=rho, adaptive=True, eta=eta,
                             adaptive_scope="kernels"))
    np.testing.assert_allclose(e[0], rho * t**2 * g_kernel / norm, rtol=1e-6)
    np.testing.assert_allclose(e[1], rho * g_bias / norm, rtol=1e-6)
    # The default ("all") scales the bias too, so the two differ.
    e_all = _np(sam_perturbation([g_kernel, g_bias], [kernel, bias], rho=rho, adaptive=True, eta=eta))
    assert np.max(np.abs(e_all[1] - e[1])) > 0.02  # measured 0.033


def test_relative_radius_follows_the_weight_norm():
    g = [np.array([3.0, 4.0], "float32"), np.array([[0.0]], "float32")]
    w = [np.array([1.0, 2.0], "float32"), np.array([[2.0]], "float32")]
    e = _np(sam_perturbation(g, w, rho=0.1, relative=True))
    # ||w|| = 3, ||g|| = 5: e = 0.1 * 3 * g / 5.
    np.testing.assert_allclose(e[0], [0.18, 0.24], rtol=1e-6)
    # Scaling all weights by 10 scales the perturbation by 10.
    e10 = _np(sam_perturbation(g, [10 * v for v in w], rho=0.1, relative=True))
    np.testing.assert_allclose(e10[0], 10 * e[0], rtol=1e-6)
    with pytest.raises(ValueError, match="variables"):
        sam_perturbation(g, rho=0.1, relative=True)


def test_grouped_relative_radius_uses_each_groups_norm():
    g = [np.array([1.0, 0.0], "float32"), np.array([2.0], "float32")]
    w = [np.array([0.0, 4.0], "float32"), np.array([0.5], "float32")]
    e = _np(grouped_perturbation(g, w, [NEURAL, PHYSICAL], {NEURAL: 0.5, PHYSICAL: 0.1}, relative=True))
    np.testing.assert_allclose(e[0], [2.0, 0.0], rtol=1e-6)  # 0.5 * ||(0, 4)||
    np.testing.assert_allclose(e[1], [0.05], rtol=1e-5)      # 0.1 * 0.5


def test_sam_passes_scope_and_relative_to_the_perturbation():
    sam = SAM(rho=0.2, adaptive=True, eta=0.1, adaptive_scope="kernels")
    g = [np.ones((2, 2), "float32"), np.ones(2, "float32")]
    w = [np.full((2, 2), 2.0, "float32"), np.full(2, 2.0, "float32")]
    e = _np(sam.perturbation(g, w, [NEURAL, NEURAL]))
    # Kernel entries scaled by T^2 = 2.1^2, bias entries by 1.
    np.testing.assert_allclose(e[0] / e[1][0], np.full((2, 2), 2.1**2), rtol=1e-5)
    rel = SAM(rho=0.1, relative=True)
    e = _np(rel.perturbation(g, w, [NEURAL, NEURAL]))
    np.testing.assert_allclose(np.sqrt(sum(np.sum(x**2) for x in e)), 0.1 * np.sqrt(24.0), rtol=1e-5)


def test_bad_adaptive_scope_and_relative_are_rejected():
    with pytest.raises(ValueError, match="adaptive_scope='biases'"):
        SAM(adaptive_scope="biases")
    with pytest.raises(TypeError, match="relative='yes'"):
        SAM(relative="yes")
    with pytest.raises(ValueError, match="adaptive_scope='x'"):
        sam_perturbation([np.ones(1, "float32")], [np.ones(1, "float32")], adaptive=True, adaptive_scope="x")


def test_none_gradients_are_skipped():
    e = sam_perturbation([None, np.array([2.0], "float32")], rho=1.0)
    assert e[0] is None
    np.testing.assert_allclose(np.asarray(e[1]), [1.0])


def test_zero_gradient_gives_zero_not_nan():
    e = _np(sam_perturbation([np.zeros(3, "float32")], rho=0.1))
    np.testing.assert_array_equal(e[0], np.zeros(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_gives_zero_perturbation(bad):
    e = _np(sam_perturbation([np.array([1.0, bad], "float32"), np.ones(2, "float32")], rho=0.1))
    for part in e:
        np.testing.assert_array_equal(part, np.zeros(2))


def test_grouped_perturbation_normalizes_each_group():
    g = [np.array([3.0, 4.0], "float32"), np.array([0.001], "float32")]
    w = [np.zeros(2, "float32"), np.zeros(1, "float32")]
    e = _np(grouped_perturbation(g, w, [NEURAL, PHYSICAL], {NEURAL: 0.5, PHYSICAL: 0.1}))
    np.testing.assert_allclose(e[0], [0.3, 0.4], rtol=1e-6)
    # The tiny physical gradient still gets the full radius of its own group.
    np.testing.assert_allclose(e[1], [0.1], rtol=1e-5)


def test_grouped_perturbation_leaves_unlisted_group_alone():
    g = [np.ones(2, "float32"), np.ones(1, "float32")]
    e = grouped_perturbation(g, g, [NEURAL, PHYSICAL], {NEURAL: 1.0})
    assert e[1] is None
    np.testing.assert_allclose(np.linalg.norm(np.asarray(e[0])), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, radii",
    [
        (dict(rho=0.1, perturb="all"), None),
        (dict(rho=0.1, perturb="all", rho_physical=0.02), {NEURAL: 0.1, PHYSICAL: 0.02}),
        (dict(rho=0.1), {NEURAL: 0.1}),
        (dict(rho=0.1, perturb="neural"), {NEURAL: 0.1}),
        (dict(rho=0.1, perturb="physical"), {PHYSICAL: 0.1}),
        (dict(rho=0.1, perturb="physical", rho_physical=0.3), {PHYSICAL: 0.3}),
    ],
)
def test_sam_radii(kwargs, radii):
    assert SAM(**kwargs).radii() == radii


def test_is_plain():
    assert SAM(rho=0).is_plain
    assert SAM(rho=0.1, perturb="physical", rho_physical=0).is_plain
    assert not SAM(rho=0, perturb="all", rho_physical=0.1).is_plain
    assert SAM(rho=0, rho_physical=0.1).is_plain  # "neural": the physical radius is unused


@pytest.mark.parametrize("rho", [-1, float("nan"), float("inf"), "0.1", None, True])
def test_bad_rho_is_rejected_with_value(rho):
    with pytest.raises((ValueError, TypeError), match="rho"):
        SAM(rho=rho)


@pytest.mark.parametrize("every", [0, -2, 1.5, True])
def test_bad_every_is_rejected(every):
    with pytest.raises(ValueError, match=f"every={every!r}"):
        SAM(every=every)


def test_bad_perturb_is_rejected():
    with pytest.raises(ValueError, match="perturb='everything'"):
        SAM(perturb="everything")


def test_defaults_are_the_measured_best_variant():
    sam = SAM()
    assert (sam.rho, sam.perturb, sam.adaptive, sam.every) == (0.3, "neural", False, 1)


def test_sam_config_round_trip():
    sam = SAM(rho=0.2, perturb="neural", rho_physical=0.01, adaptive=True, eta=0.5, synchronized=False,
              every=5, alpha=0.5, adaptive_scope="kernels", relative=True)
    assert SAM.from_config(sam.get_config()) == sam


def test_exclude_matches_path_parts_and_round_trips():
    sam = SAM(rho=0.1, exclude=("encoder",))
    assert sam.is_excluded("encoder/kernel")
    assert sam.is_excluded("model/encoder/dense/kernel")
    assert not sam.is_excluded("encoder_2/kernel")
    assert not SAM().is_excluded("encoder/kernel")
    assert SAM.from_config(sam.get_config()) == sam
    with pytest.raises(TypeError, match="exclude"):
        SAM(exclude="encoder")


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        ([1.0, -2.0], "float32", True),
        ([1.0, np.nan], "float32", False),
        ([np.inf, 1.0], "float32", False),
        ([np.inf, -np.inf], "float32", False),
        # Finite entries whose sum overflows: the fast path's total is Inf,
        # and the entry-by-entry check must still say finite.
        ([3e38, 3e38], "float32", True),
        ([6e4, 6e4], "float16", True),
        ([1e308, 1e308], "float64", True),
        ([1e308, np.nan], "float64", False),
    ],
)
def test_all_finite_is_exact(values, dtype, expected):
    from keras_hybrid.sam import all_finite

    tensors = [np.array(values, dtype), np.ones(3, dtype)]
    assert bool(all_finite(tensors)) is expected
    assert bool(all_finite([None] + tensors)) is expected
