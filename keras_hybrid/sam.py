"""Sharpness-aware minimization: the perturbation, as pure functions, and
its settings (`SAM`).

For one group of parameters `w` with loss gradient `g`, SAM ascends to
the worst point of a ball of radius `rho` before taking the gradient:

```
e = rho * T^2 g / ||T g||       T = 1 (SAM) or |w| + eta (adaptive SAM)
w_next = w - lr * grad L(w + e)
```

A hybrid model has two groups with different units: neural-network weights
and the raw (unconstrained) values of physical constants. Each group may
get its own radius and its own norm, or be left unperturbed.

Reference:
    Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", arXiv:2010.01412. Kwon et al., "ASAM: Adaptive
    Sharpness-Aware Minimization", arXiv:2102.11600. Takeishi,
    "Sharpness-Aware Hybrid Model Learning for Architecture-Agnostic
    Parameter Estimation", arXiv:2602.06837.
"""

import math
import numbers

import keras
import tensorflow as tf
from keras import ops

NEURAL = "neural"
PHYSICAL = "physical"
EXCLUDED = "excluded"
PERTURB_CHOICES = ("all", NEURAL, PHYSICAL)


def _check_radius(arg, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{arg}` must be a non-negative number. Received: {arg}={value!r}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{arg}` must be >= 0 and finite. Received: {arg}={value!r}")
    return float(value)


def _check_bool(arg, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{arg}` must be True or False. Received: {arg}={value!r}")
    return value


def all_finite(tensors):
    """Scalar boolean tensor: every entry of every (non-`None`) tensor is finite.

    Exact, and cheap in the common case: a NaN or Inf entry makes its
    tensor's sum non-finite, so a finite total of the (float32) sums proves
    every entry finite with one reduction per tensor. Only a non-finite
    total (a bad entry, or finite entries whose sum overflows) pays for the
    entry-by-entry check, which decides.
    """
    present = [x for x in tensors if x is not None]
    if not present:
        return ops.convert_to_tensor(True)
    sums = [ops.sum(ops.cast(x, "float32") if _narrow_float(x) else x) for x in present]
    total = ops.sum(ops.stack([ops.cast(s, "float32") for s in sums]))

    def entry_by_entry():
        return ops.all(ops.stack([ops.all(ops.isfinite(x)) for x in present]))

    return ops.cond(ops.isfinite(total), lambda: ops.convert_to_tensor(True), entry_by_entry)


def accumulation_dtype(tensors):
    """The dtype in which SAM sums over tensors: `"float64"` if any of them
    is float64 (a float64 model keeps its precision), else `"float32"`
    (float16 and bfloat16 gradients are summed in float32)."""
    wide = any(keras.backend.standardize_dtype(t.dtype) == "float64" for t in tensors)
    return "float64" if wide else "float32"


def _narrow_float(x):
    # float16 sums overflow at 65504: sum in float32 instead. Integer and
    # wider float tensors are summed as they are.
    return keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16")


def _is_kernel(variable):
    """Rank >= 2: a kernel (dense or convolution), not a bias or a scalar."""
    return variable is not None and len(getattr(variable, "shape", ())) >= 2


def _names_of(variable_or_path, holders=()):
    """The parts of a variable's path and the names of the layers holding it."""
    path = getattr(variable_or_path, "path", variable_or_path)
    return [*str(path).split("/"), *holders]


def dense_gradients(gradients):
    """`gradients` (a list, `None` entries kept) as dense tensors. An
    Embedding's gradient comes as `tf.IndexedSlices` with one slice per
    lookup: an index looked up twice has two slices, whose squares summed
    one by one are not the square of their sum, so norms, dot products and
    flattening take the dense gradient (SAM's perturbation is dense anyway
    once added to the weights)."""
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]


def sam_perturbation(
    gradients,
    variables=None,
    rho=0.05,
    adaptive=False,
    eta=0.01,
    eps=1e-12,
    adaptive_scope="all",
    relative=False,
    scales=None,
):
    """Perturbation `e` of one parameter group (SAM or adaptive SAM).

    ```
    e = r T^2 g / ||T g||
    T = 1 (SAM), |w| + eta (ASAM, scaled variables), 1 (ASAM, others),
        or the given `scales[i]` (ASAM)
    r = rho, or rho ||w|| with `relative=True`
    ```

    Args:
        gradients: list of gradient tensors; `None` entries (unused
            variables) give `None` perturbations.
        variables: list of current parameter values, same order; needed only
            when `adaptive=True` or `relative=True`. Defaults to `None`.
        rho: radius of the neighbourhood. Defaults to `0.05`.
        adaptive: scale by `|w| + eta` (ASAM). Defaults to `False`.
        eta: offset of the adaptive scaling. Defaults to `0.01`.
        eps: added to the norm so that a zero gradient gives a zero (not NaN)
            perturbation. Defaults to `1e-12`.
        adaptive_scope: which variables ASAM scales: `"all"`, or
            `"kernels"` (variables of rank >= 2 only, as the reference
            ASAM implementation does; biases and scalars keep `T = 1`).
            Defaults to `"all"`.
        relative: the radius is `rho` times the norm of this group's
            variables (with a gradient), so that it follows the scale of
            the weights. Defaults to `False`.
        scales: with `adaptive=True`, an optional list (same order) of
            scale tensors `T` that replace `|w| + eta` for their variables
            (`None` entries follow `adaptive_scope`). `HybridModel` passes
            the physical scale of each constant here (see
            `PhysicalConstant.asam_scale`). Defaults to `None`.

    Returns:
        A list of perturbation tensors (or `None`) matching `gradients`. If
        any gradient is non-finite the perturbation is zero: the step then
        falls back to the plain gradient instead of poisoning the weights.
    """
    if adaptive_scope not in ("all", "kernels"):
        raise ValueError(
            "`adaptive_scope` must be 'all' or 'kernels'. "
            f"Received: adaptive_scope={adaptive_scope!r}"
        )
    if (adaptive or relative) and variables is None:
        raise ValueError(
            "`variables` are required when `adaptive=True` or `relative=True`. "
            f"Received: variables=None, adaptive={adaptive!r}, relative={relative!r}"
        )
    if variables is None:
        variables = [None] * len(gradients)
    if scales is None:
        scales = [None] * len(gradients)
    elif len(scales) != len(gradients):
        raise ValueError(
            f"`scales` must have one entry per gradient. Received {len(scales)} scales "
            f"for {len(gradients)} gradients"
        )
    present = [(i, g, w) for i, (g, w) in enumerate(zip(dense_gradients(gradients), variables))
               if g is not None]
    perturbation = [None] * len(gradients)
    if not present or rho == 0:
        return perturbation
    dtype = accumulation_dtype(g for _, g, _ in present)
    scaled = []
    for i, g, w in present:
        g = ops.cast(g, dtype)
        if adaptive and scales[i] is not None:
            scale = ops.cast(scales[i], dtype)
        elif adaptive and (adaptive_scope == "all" or _is_kernel(w)):
            scale = ops.abs(ops.cast(w, dtype)) + eta
        else:
            scale = None
        scaled.append((g, scale))
    squared = [ops.sum(ops.square(g * s if s is not None else g)) for g, s in scaled]
    norm = ops.sqrt(ops.sum(ops.stack(squared)))
    radius = rho
    if relative:
        weight_sq = [ops.sum(ops.square(ops.cast(w, dtype))) for _, _, w in present]
        radius = rho * ops.sqrt(ops.sum(ops.stack(weight_sq)))
    # Any NaN/Inf entry makes the norm non-finite; the scalar select then
    # returns zeros, so no NaN can leak into the perturbed weights. (A
    # `cond` on the scalar, not an entry-wise `where`: no pass over the
    # weights.)
    finite = ops.logical_and(ops.isfinite(norm), ops.isfinite(radius))
    factor = radius / (norm + eps)

    def scaled_directions():
        return [
            ops.cast(factor * (g * ops.square(s) if s is not None else g), g_orig.dtype)
            for (_, g_orig, _), (g, s) in zip(present, scaled)
        ]

    def zeros():
        return [ops.zeros(ops.shape(g_orig), g_orig.dtype) for _, g_orig, _ in present]

    for (i, _, _), e in zip(present, ops.cond(finite, scaled_directions, zeros)):
        perturbation[i] = e
    return perturbation


def grouped_perturbation(
    gradients,
    variables,
    groups,
    radii,
    adaptive=False,
    eta=0.01,
    eps=1e-12,
    adaptive_scope="all",
    relative=False,
    scales=None,
):
    """Perturbation with one norm and one radius per parameter group.

    Args:
        gradients: list of gradient tensors (or `None`).
        variables: list of current parameter values, same order.
        groups: list of group names, one per variable.
        radii: dict `group name -> rho`; a group missing from the dict or
            with radius 0 is not perturbed.
        adaptive, eta, eps, adaptive_scope, relative, scales: as in
            `sam_perturbation`, applied to each group on its own (with
            `relative=True` each group's radius follows its own norm).

    Returns:
        A list of perturbation tensors (or `None`) matching `gradients`.
    """
    if not len(gradients) == len(variables) == len(groups):
        raise ValueError(
            "`gradients`, `variables` and `groups` must have the same length. "
            f"Received lengths {len(gradients)}, {len(variables)}, {len(groups)}"
        )
    if scales is None:
        scales = [None] * len(gradients)
    perturbation = [None] * len(gradients)
    for group, rho in radii.items():
        index = [i for i, name in enumerate(groups) if name == group]
        if not index or not rho:
            continue
        part = sam_perturbation(
            [gradients[i] for i in index],
            [variables[i] for i in index],
            rho=rho,
            adaptive=adaptive,
            eta=eta,
            eps=eps,
            adaptive_scope=adaptive_scope,
            relative=relative,
            scales=[scales[i] for i in index],
        )
        for i, e in zip(index, part):
            perturbation[i] = e
    return perturbation


@keras.saving.register_keras_serializable(package="keras_hybrid")
class SAM:
    """Settings of a sharpness-aware training step.

    The defaults, `rho=0.3, perturb="neural"`, are the variant that
    recovered physical constants best in our reproductions
    (`benchmarks/RESULTS.md`): on the damped pendulum it recovers the
    frequency to 1.5 % (plain training: 45 %), whereas perturbing the
    constants too (one global norm, or adaptive SAM) pushes them away
    from their true values. On a model without physical constants,
    `"neural"` and `"all"` are the same. The best radius depends on the
    network and the loss scale: tune it on validation error. When an
    encoder network infers the physical constants (one value per episode),
    name its layers in `exclude`: on per-episode pendulum data this was the
    difference between 4x better and worse than plain training.

    Args:
        rho: radius of the perturbation. With `perturb="all"` and
            `rho_physical=None`, one global norm over all trainable
            variables (standard SAM, where 0.05 is the usual radius);
            otherwise the radius of the neural group. Defaults to `0.3`.
        perturb: which parameters are perturbed: `"all"`, `"neural"` (only
            network weights; physical constants are evaluated at their
            current value) or `"physical"` (only physical constants).
            A model with nothing to perturb (no network weights under
            `"neural"`) takes plain gradient steps, at the cost of one
            pass. Defaults to `"neural"`.
        rho_physical: radius of the physical-constant group, normalized
            separately from the neural group (their units differ). `None`
            means: same radius and a shared norm with `perturb="all"`, and
            `rho` with `perturb="physical"`. Defaults to `None`.
        adaptive: adaptive SAM (ASAM), scaling the ball by `|w| + eta`.
            A physical constant is scaled by its *physical* value,
            `|c| + eta * scale`, carried into its raw space through the
            constraint's map (`PhysicalConstant.asam_scale`), so that its
            share of the ball does not depend on the parameterization: for
            a positive constant a raw step already is a relative change.
            Defaults to `False`.
        eta: offset of the adaptive scaling. Defaults to `0.01`.
        eps: added to gradient norms. Defaults to `1e-12`.
        synchronized: under a `tf.distribute` strategy, compute the
            perturbation from the all-reduced (global-batch) gradient, which
            equals single-device SAM on the whole batch (one extra
            all-reduce per step). `False` perturbs each replica with its own
            gradient (m-sharpness, m = per-replica batch). In both cases the
            gradients at the perturbed weights are averaged over replicas by
            the optimizer, so replicas stay identical. Defaults to `True`.
        every: compute the SAM gradient only every `every` steps (LookSAM,
            Liu et al., arXiv:2203.02714); in between, one forward-backward
            pass, with the stored component of the last SAM gradient
            orthogonal to the plain gradient added back. `1` is full SAM.
            The stored direction is not a model weight: it is not saved,
            and the first step after a restart (a resumed `fit`, a loaded
            model, weights loaded or set into the model) is a full SAM
            step. Steps are counted by the optimizer's `iterations`, which
            with `gradient_accumulation_steps=k` advance once per applied
            update, not once per batch (the k batches of one update are all
            full SAM, or all reuse the stored direction). Not available
            under a multi-replica `tf.distribute` strategy. Defaults to
            `1`.
        alpha: LookSAM's weight of the stored direction. Defaults to `0.7`.
        exclude: names of layers whose weights are never perturbed, e.g.
            an encoder that infers per-episode physical constants: its
            weights are "neural", but perturbing them perturbs the
            constants, and the ascent then pushes the model away from
            relying on the physics. A variable is excluded when one of the
            `/`-separated parts of its path, or the name of a layer or
            model holding it (a nested `Sequential` named `"encoder"`,
            also after loading, where its variables' paths no longer
            carry that name), equals one of these names. Defaults to `()`.
        adaptive_scope: with `adaptive=True`, which network variables
            are scaled by `|w| + eta`: `"all"`, or `"kernels"` (rank >= 2
            only, as in the reference ASAM implementation; biases keep
            `T = 1`). Physical constants get their physical scale in both.
            Defaults to `"all"`.
        relative: make each group's radius `rho` times the norm of that
            group's weights (`rho` is then a fraction, e.g. 0.03), so that
            the ball follows the scale of the weights. Defaults to `False`.

    Example:

    ```python
    sam = SAM(rho=0.3, perturb="neural")
    model = HybridModel(inputs, outputs, sam=sam)
    ```
    """

    def __init__(
        self,
        rho=0.3,
        perturb="neural",
        rho_physical=None,
        adaptive=False,
        eta=0.01,
        eps=1e-12,
        synchronized=True,
        every=1,
        alpha=0.7,
        exclude=(),
        adaptive_scope="all",
        relative=False,
    ):
        self.rho = _check_radius("rho", rho)
        self.rho_physical = _check_radius("rho_physical", rho_physical, allow_none=True)
        if perturb not in PERTURB_CHOICES:
            raise ValueError(
                f"`perturb` must be one of {PERTURB_CHOICES}. Received: perturb={perturb!r}"
            )
        self.perturb = perturb
        self.adaptive = _check_bool("adaptive", adaptive)
        self.eta = _check_radius("eta", eta)
        eps = _check_radius("eps", eps)
        if eps == 0:
            raise ValueError(f"`eps` must be > 0. Received: eps={eps!r}")
        self.eps = eps
        self.synchronized = _check_bool("synchronized", synchronized)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be an integer >= 1. Received: every={every!r}")
        self.every = every
        self.alpha = _check_radius("alpha", alpha)
        if isinstance(exclude, str) or not all(isinstance(name, str) and name for name in exclude):
            raise TypeError(
                "`exclude` must be a list or tuple of layer names. "
                f"Received: exclude={exclude!r}"
            )
        self.exclude = tuple(exclude)
        if adaptive_scope not in ("all", "kernels"):
            raise ValueError(
                "`adaptive_scope` must be 'all' or 'kernels'. "
                f"Received: adaptive_scope={adaptive_scope!r}"
            )
        self.adaptive_scope = adaptive_scope
        self.relative = _check_bool("relative", relative)
        self._frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(
                f"`SAM` settings are read-only (the compiled training step depends on them). "
                f"To change `{name}`, assign new settings to the model: "
                f"`model.sam = SAM(..., {name}={value!r})`."
            )
        object.__setattr__(self, name, value)

    def check_exclude(self, variables, holders=None):
        """Raises if a name in `exclude` matches no variable.

        Args:
            variables: the variables that could be excluded (e.g. a model's
                trainable variables).
            holders: optional dict `id(variable) -> names` of the layers
                holding each variable (see `is_excluded`).
        """
        holders = holders or {}
        names = {name for v in variables for name in _names_of(v, holders.get(id(v), ()))}
        missing = [name for name in self.exclude if name not in names]
        if missing:
            layers = sorted({part for v in variables for part in str(v.path).split("/")[:-1]}
                            | {name for v in variables for name in holders.get(id(v), ())})
            raise ValueError(
                f"`exclude` names {missing} match no layer holding a trainable variable, nor "
                f"any part of a variable's path, so nothing would be excluded. Layer names of "
                f"the trainable variables: {layers}. Received: exclude={list(self.exclude)!r}"
            )

    def is_excluded(self, path, holders=()):
        """True if the variable at `path`, held by the layers named
        `holders` (outermost first), is never perturbed (`exclude`)."""
        return bool(self.exclude) and any(
            name in self.exclude for name in _names_of(path, holders))

    def radii(self):
        """Dict `group -> rho` for `grouped_perturbation`, or `None` when
        a single global norm over all variables is used."""
        if self.perturb == "all":
            if self.rho_physical is None:
                return None
            return {NEURAL: self.rho, PHYSICAL: self.rho_physical}
        if self.perturb == NEURAL:
            return {NEURAL: self.rho}
        rho = self.rho if self.rho_physical is None else self.rho_physical
        return {PHYSICAL: rho}

    @property
    def is_plain(self):
        """True when no parameter is ever perturbed (a plain gradient step)."""
        radii = self.radii()
        if radii is None:
            return self.rho == 0
        return not any(radii.values())

    def perturbs_any(self, groups):
        """True if some variable of these groups (one per variable, as in
        `perturbation`) would be perturbed: `perturb="neural"` on a model
        without trainable network weights perturbs nothing."""
        radii = self.radii()
        if radii is None:
            return self.rho != 0 and any(group != EXCLUDED for group in groups)
        return any(radii.get(group) for group in groups)

    def perturbation(self, gradients, variables, groups, scales=None):
        """The perturbation for these gradients, variables and groups.

        Variables of group `EXCLUDED` get no perturbation and do not count
        in the norms. `scales` (optional, same order): adaptive scales that
        replace `|w| + eta`, e.g. the physical scales of constants.
        """
        radii = self.radii()
        kwargs = dict(
            adaptive=self.adaptive,
            eta=self.eta,
            eps=self.eps,
            adaptive_scope=self.adaptive_scope,
            relative=self.relative,
            scales=scales,
        )
        if radii is None:
            gradients = [None if group == EXCLUDED else g for g, group in zip(gradients, groups)]
            return sam_perturbation(gradients, variables, rho=self.rho, **kwargs)
        return grouped_perturbation(gradients, variables, groups, radii, **kwargs)

    def get_config(self):
        return {
            "rho": self.rho,
            "perturb": self.perturb,
            "rho_physical": self.rho_physical,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "eps": self.eps,
            "synchronized": self.synchronized,
            "every": self.every,
            "alpha": self.alpha,
            "exclude": list(self.exclude),
            "adaptive_scope": self.adaptive_scope,
            "relative": self.relative,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"SAM({args})"

    def __eq__(self, other):
        return isinstance(other, SAM) and self.get_config() == other.get_config()

    __hash__ = None
