"""Reproduction of the hybrid-modeling experiments: plain training,
regularizers and SAM variants, side by side.

Run, for example:

```
python -m keras_hybrid.experiments pendulum --methods erm,sam-neural --seeds 3 --json out.json
```

Systems: the small-data algebraic laws `michaelis_menten`, `arrhenius`,
`first_order_kinetics` (`keras_hybrid.systems.algebraic`; the network
reads the raw independent variable), `pendulum` (damped, one global `w0`), `pendulum_episodes`
(damped, per-episode `w0` inferred by an encoder, shared damping supplied
by a global network), `forced_pendulum` (forced damped pendulum,
per-episode `w0` inferred by an encoder), `pendulum_images` (damped,
global `w0`, observed only through rendered 16x16 frames: an encoder of
the first three frames gives the initial state, a decoder renders the
predicted states), `duffing`
(global `alpha`, `delta`; the network supplies the cubic term and the
forcing: a documented negative result), `duffing_forcing` (global
`alpha`, `beta`, `delta`; the network supplies the forcing),
`reaction_diffusion` (FitzHugh-Nagumo, global
diffusion coefficients `a`, `b`). Methods: `erm` (plain training), `l2`
(weight decay on the network), `minnorm` (penalty `lambda ||f_net||^2` on
the network's output, as in APHYNITY), `sam` (SAM on all parameters, one
global norm), `sam-neural` (SAM on the network weights only), `asam`
(adaptive SAM on all parameters), and, not run by default,
`sam-correction` (`sam-neural` with the encoder of per-episode constants,
and on `pendulum_images` the frame encoder and decoder, left
unperturbed), `sam-auto` (neural-only SAM, radius chosen per seed by
`keras_hybrid.radius_path` from training and validation data),
`asam-neural` (adaptive SAM on the network, kernels scaled),
`sam-relative` (neural-only SAM, radius relative to the weights' norm) and
`physics` (the physics part alone; algebraic tasks, `pendulum`,
`duffing_forcing`). On `pendulum` and `duffing_forcing`, `--architecture`
chooses where the network enters: `vector_field` (inside the ODE),
`output` (added to the trajectory) or `nonadditive` (the trajectory times
`1 + net`; `minnorm` is n/a). All methods share data, model,
initialization, optimizer and number of steps. A run in which every
method is n/a writes its report and exits with status 2: nothing was
fitted.

Hyperparameters (`lambda`, `rho`) are chosen on seed 0 from the validation
prediction error only (never from the true constants): among the swept
values, the largest whose validation MSE is within `1 + tolerance` of the
best one. Metrics are measured on a fixed test set: parameter error
(absolute and relative; mean over constants, and over test episodes for
per-episode constants), test MSE of the predicted trajectories, and the
network's share `||f_net|| / ||f_phys + f_net||` of the vector field at the
observed test states.

Reference:
    Takeishi, "Sharpness-Aware Hybrid Model Learning for
    Architecture-Agnostic Parameter Estimation", arXiv:2602.06837.
"""

from keras_hybrid.experiments import methods  # noqa: E402
from keras_hybrid.experiments.algebraic import (  # noqa: E402
    ArrheniusTask,
    FirstOrderKineticsTask,
    MichaelisMentenTask,
)
from keras_hybrid.experiments.cli import main  # noqa: E402
from keras_hybrid.experiments.tables import format_sweep, format_table, markdown_tables  # noqa: E402
from keras_hybrid.experiments.runner import SYSTEMS, run_experiment, run_one  # noqa: E402
from keras_hybrid.experiments.tasks import (  # noqa: E402
    ArchitectureTask,
    DuffingForcingTask,
    DuffingTask,
    ForcedPendulumTask,
    PendulumEpisodesTask,
    PendulumImagesTask,
    PendulumTask,
    ReactionDiffusionTask,
)

__all__ = [
    "ArchitectureTask", "ArrheniusTask", "DuffingForcingTask", "DuffingTask", "FirstOrderKineticsTask",
    "ForcedPendulumTask", "MichaelisMentenTask", "PendulumEpisodesTask", "PendulumImagesTask", "PendulumTask",
    "ReactionDiffusionTask", "SYSTEMS", "format_sweep",
    "format_table", "main", "markdown_tables", "methods", "run_experiment", "run_one",
]
