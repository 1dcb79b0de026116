"""How far to trust a fitted constant: intervals, profiles, verdicts.

Keras-facing wrappers over the linear algebra in `keras_hybrid.uncertainty`:
`constant_uncertainty` (Gauss–Newton / Laplace intervals, network
marginalized or fixed), `profile_likelihood` (refits with one constant
held fixed) and `report` (both, printed).

Modules: `residuals` (the weighted residuals and their Jacobian
products), `information` (the information blocks and the marginal
information), `prior` (noise variance and prior precision, the evidence),
`laplace` (`constant_uncertainty`), `results` (`ConstantUncertainty`,
`ProfileLikelihood`), `profiles` (`profile_likelihood`) and `reporting`
(`report`). Everything is importable from `keras_hybrid.diagnostics`.
"""

from keras_hybrid.diagnostics.information import (  # noqa: F401
    _compiled_blocks,
    _compiled_data_space_information,
    _dense_blocks,
    _host_blocks,
    _host_data_space_information,
    _information_blocks,
    _marginal_information,
)
from keras_hybrid.diagnostics.laplace import (  # noqa: F401
    _METHODS,
    _NETWORK_MODES,
    _check_choice,
    _check_model,
    _check_settings,
    _physical_intervals,
    _resolve_method,
    _verdicts,
    _widen_by_path,
    constant_uncertainty,
)
from keras_hybrid.diagnostics.prior import (  # noqa: F401
    _evidence_fixed_point,
    _evidence_notes,
    _noise_and_prior,
    _prior_precisions,
)
from keras_hybrid.diagnostics.profiles import (  # noqa: F401
    _owner_layer,
    clone_for_refit,
    fresh_compile,
    profile_likelihood,
)
from keras_hybrid.diagnostics.reporting import report  # noqa: F401
from keras_hybrid.diagnostics.residuals import (  # noqa: F401
    _as_arrays,
    _constant_entries,
    _first_dim,
    _network_variables,
    _Residuals,
    _slice,
    _weights_like,
)
from keras_hybrid.diagnostics.results import ConstantUncertainty, ProfileLikelihood  # noqa: F401

# The settings below are read through this module at call time, so that
# assigning one here (`keras_hybrid.diagnostics.COMPILED_CG = False`) takes
# effect in the submodules.

#: Largest `n_values * n_parameters` for which `method="dense"` builds the
#: full Jacobian (float32: 2e7 entries are 80 MB).
MAX_DENSE_ENTRIES = 20_000_000
#: Largest number of network weights for the dense method (an eigen-solve
#: of `p x p`).
MAX_DENSE_WEIGHTS = 2_000
#: Prior precision on the network weights when neither `prior_precision`
#: nor an L2 regularizer gives one: a standard-normal prior.
DEFAULT_PRIOR_PRECISION = 1.0
#: The default prior turns from the standard normal to the evidence when a
#: layer's fitted weights have an RMS above this (the standard normal would
#: then put them beyond 3 standard deviations, and the verdicts would
#: depend on the units of the data).
STANDARD_NORMAL_MAX_RMS = 3.0
#: Lanczos iterations and random probes of the stochastic quadrature that
#: estimates the spectrum of `J_w^T J_w` with `method="cg"` (the dense
#: method takes the exact eigenvalues): for the evidence prior,
#: and for the network's well-determined weights in the noise estimate.
LANCZOS_STEPS = 30
LANCZOS_PROBES = 4
#: With `method="cg"`, the quadrature above also counts the network's
#: well-determined weights in the noise estimate; it stops adding probes
#: once they change the noise variance by less than this fraction.
NEGLIGIBLE_NOISE_SHIFT = 0.01

#: With `method="cg"` and the data in one chunk (`batch_size=None`), take
#: every product of the solve (Jacobian columns, residuals, CG products)
#: from one compiled function (`keras_hybrid._data_space`); `False` takes
#: the separate products used with several chunks.
COMPILED_CG = True

#: Warn when the residual variances of a model's output channels (the last
#: axis of each output) differ by more than this factor: one noise level
#: for all of them is then wrong.
OUTPUT_SCALE_RATIO = 4.0
