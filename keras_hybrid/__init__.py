"""keras_hybrid: hybrid (mechanistic + neural) models for Keras 3, trained
with sharpness-aware minimization so that physical constants are recovered
instead of being absorbed by the network.
"""

__version__ = "0.1.0"

# Before TensorFlow is imported; acts only under `python -m keras_hybrid.demo`
# or `python -m keras_hybrid.experiments`, never on a plain import.
from keras_hybrid._cli import quiet_command_line as _quiet_command_line

_quiet_command_line()

from keras_hybrid.callbacks import ConstantsHistory, NonFiniteGuard
from keras_hybrid.constants import PhysicalConstant
from keras_hybrid.data import repeated_dataset
from keras_hybrid.diagnostics import (
    ConstantUncertainty,
    ProfileLikelihood,
    constant_uncertainty,
    profile_likelihood,
    report,
)
from keras_hybrid.export import export_saved_model, load_metadata
from keras_hybrid.forecast import with_times
from keras_hybrid.layers import (
    ODELayer,
    ScientificLayer,
    constant_units,
    is_physical_variable,
    physical_constants,
)
from keras_hybrid.models import HybridModel, SAMModel, SAMTrainStep
from keras_hybrid.radius import (
    RadiusPath,
    choose_radius,
    eligible_radii,
    paired_t_test,
    radius_p_values,
    radius_path,
    signed_rank_test,
)
from keras_hybrid.observations import ObservationGrid, common_time_grid
from keras_hybrid.ode import TABLEAUS, ButcherTableau, odeint, rk_step
from keras_hybrid.sam import SAM, grouped_perturbation, sam_perturbation
from keras_hybrid.shooting import MultipleShooting, SegmentOffsets
from keras_hybrid.summary import constants_table, summary

__all__ = [
    "ButcherTableau",
    "ConstantUncertainty",
    "ConstantsHistory",
    "HybridModel",
    "MultipleShooting",
    "NonFiniteGuard",
    "ObservationGrid",
    "ODELayer",
    "PhysicalConstant",
    "ProfileLikelihood",
    "RadiusPath",
    "SAM",
    "SAMModel",
    "SAMTrainStep",
    "ScientificLayer",
    "SegmentOffsets",
    "TABLEAUS",
    "choose_radius",
    "common_time_grid",
    "constant_uncertainty",
    "constant_units",
    "constants_table",
    "eligible_radii",
    "export_saved_model",
    "grouped_perturbation",
    "is_physical_variable",
    "load_metadata",
    "odeint",
    "paired_t_test",
    "physical_constants",
    "profile_likelihood",
    "radius_p_values",
    "radius_path",
    "repeated_dataset",
    "report",
    "rk_step",
    "sam_perturbation",
    "signed_rank_test",
    "summary",
    "with_times",
]
