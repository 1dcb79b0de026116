"""The radius path: one fit per SAM radius, the radius chosen from
validation data, and the physics part alone as a reference.

SAM's ball has a fixed radius in weight space, so the radius that protects
the physical constants moves with the scale of the network's inputs and
weights: a radius too small changes nothing, one too large underfits. The
radius path trains the same model at several radii and shows what each
radius does to the constants and to the validation loss, so that the
radius is chosen from data and the user sees how much the constants
depend on it.

Modules: `selection` (the paired and relative rules: `choose_radius`,
`eligible_radii`, `radius_p_values`, `signed_rank_test`, ...), `result`
(`RadiusPath`) and `fitting` (`radius_path`). Everything is importable
from `keras_hybrid.radius`.
"""

from keras_hybrid.radius.fitting import (  # noqa: F401
    _build,
    _evaluate,
    _fit_physics_only,
    _fit_row,
    _net_share,
    _neural_variables,
    _num_samples,
    _per_sample_losses,
    _split,
    _standard_error,
    _take,
    radius_path,
)
from keras_hybrid.radius.result import RadiusPath  # noqa: F401
from keras_hybrid.radius.selection import (  # noqa: F401
    PAIRED_TESTS,
    RULES,
    _check_lengths,
    _check_number,
    _check_paired_test,
    _one_sided_p,
    choose_radius,
    eligible_radii,
    holm_rejections,
    paired_t_test,
    radius_p_values,
    rank_test_resolves,
    selection_limit,
    signed_rank_test,
)

#: The radii `radius_path` fits when `rhos` is not given (read at call time).
DEFAULT_RHOS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
