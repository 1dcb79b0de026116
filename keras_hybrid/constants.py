"""Physical constants: named, unit-carrying, constrained by reparameterization."""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

# TFP's bijectors give numerically careful forward/inverse maps (softplus,
# scaled sigmoid) for the bounded and the legacy parameterizations.
from tensorflow_probability import bijectors as tfb

_CONSTRAINTS = ("none", "positive", "bounded")
PARAMETERIZATIONS = ("scaled", "legacy")

_F32 = np.finfo(np.float32)


def _check_finite_number(arg, value):
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()  # e.g. `np.array(2.0)`, or a value read off a tensor
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{arg}` must be a real number. Received: {arg}={value!r} "
            f"of type {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"`{arg}` must be finite. Received: {arg}={value!r}")
    return float(value)


def _check_float32(arg, value):
    """Rejects numbers that float32 (the dtype of the stored variable) cannot hold."""
    if abs(value) > float(_F32.max):
        raise ValueError(
            f"`{arg}` overflows float32 (largest finite value {float(_F32.max):.4g}), "
            f"the dtype constants are stored in. Received: {arg}={value!r}. "
            "Express the constant in a larger unit."
        )
    if 0 < abs(value) < float(_F32.tiny):
        # Below the smallest normal float32, TensorFlow on CPU reads 0.
        raise ValueError(
            f"`{arg}` underflows float32 (smallest normal value {float(_F32.tiny):.4g}), "
            f"the dtype constants are stored in. Received: {arg}={value!r}. "
            "Express the constant in a smaller unit."
        )
    return value


@keras.saving.register_keras_serializable(package="keras_hybrid")
class PhysicalConstant:
    """Specification of a named physical constant of a mechanistic equation.

    The constant is stored by its `ScientificLayer` as an *unconstrained*
    float32 trainable variable `raw`; its physical value is
    `to_physical(raw)`:

    ```
    constraint=None       value = scale * raw                     (any sign)
    constraint="positive" value = scale * exp(raw)                (value > 0)
    constraint=(lo, hi)   value = lo + (hi - lo) * sigmoid(raw)   (lo < value < hi)
    ```

    so the constraint holds for *every* value of `raw`, including the
    perturbed weights of a sharpness-aware step (a Keras `constraint=` only
    projects after an optimizer update and would not protect that pass).

    `raw` is dimensionless: an optimizer step of a given size in `raw`
    changes the constant by that fraction of `scale` (unconstrained) or of
    its own value (positive: `exp` turns additive steps into relative
    ones), whatever the constant's magnitude. `scale` defaults to the
    magnitude of the initial value, so a rate of 1e5 and one of 1e-3 move at
    the same relative speed under Adam, without rescaling the equation by
    hand. Bounded constants are already dimensionless through the sigmoid
    and ignore `scale`. The targets still want a unit that puts them near
    1: Adam divides by `sqrt(v) + epsilon` (`epsilon=1e-7`), and a loss
    around 1e-12 has gradients below that, so nothing moves (a
    Michaelis-Menten fit with rates of 1e-6 mol/s left `Vm` at its
    initial value after 1500 epochs; the same data in umol/s reached the
    least-squares values).

    Why `exp` for positive constants: on a Michaelis-Menten fit (24 points,
    Vm = 200, K = 0.05, started at 100 and 0.5, `Adam(1e-2)`, full batch;
    `python benchmarks/constant_scales.py`), both constants stayed within
    1 % of the least-squares values from step 842 on with `scale * exp(raw)`
    at every magnitude (all values times 1e-3, 1 and 1e3), from step 970
    with `scale * softplus(raw)`, and with the former `softplus(raw)` from
    step 854 at 1e-3 but never within 3000 steps at 1 and 1e3. Started 10x
    too low (Vm = 20, K = 0.005), `exp` took 486 steps and
    `scale * softplus` did not get there in 3000 (softplus is linear above
    `scale`, so a constant that must grow far moves by about
    `scale * learning_rate` per step); started 10x too high, 647 and 633.

    `parameterization="legacy"` is the map of keras_hybrid 0.1
    (`value = raw`, `softplus(raw)`, the same sigmoid), kept so that files
    saved then load with their values: a config without a
    `"parameterization"` entry is read as legacy.

    Args:
        name: Python identifier used as the key of the constant in the
            equation's `constants` dict, e.g. `"w0"`.
        value: initial value, in physical units (`unit`). Must be finite in
            float32.
        unit: unit string, for display and export only, e.g. `"rad/s"`.
            Defaults to `""` (dimensionless).
        constraint: `None`, `"positive"`, or a `(lo, hi)` tuple of bounds in
            physical units. Defaults to `None`.
        trainable: whether the constant is estimated during training.
            Defaults to `True`.
        description: free text shown in summaries. Defaults to `""`.
        scale: typical magnitude of the constant, in physical units (> 0):
            the value of one unit of `raw` (unconstrained) or the value at
            `raw = 0` (positive). Defaults to `None`: `abs(value)`, or `1.0`
            when `value` is 0.
        parameterization: `"scaled"` (the maps above) or `"legacy"` (the
            keras_hybrid 0.1 maps, without `scale`). Defaults to `"scaled"`.

    Example:

    ```python
    vm = PhysicalConstant("Vm", 2e5, unit="uM/s", constraint="positive")
    vm.raw_initial_value()             # 0.0: raw = log(value / scale)
    vm.to_physical(vm.to_raw(3e5))     # 3e5
    ```
    """

    def __init__(
        self,
        name,
        value,
        unit="",
        constraint=None,
        trainable=True,
        description="",
        scale=None,
        parameterization="scaled",
    ):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                "`name` must be a Python identifier string. "
                f"Received: name={name!r}"
            )
        value = _check_float32("value", _check_finite_number("value", value))
        if not isinstance(unit, str):
            raise TypeError(f"`unit` must be a string. Received: unit={unit!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"`parameterization` must be one of {PARAMETERIZATIONS}. "
                f"Received: parameterization={parameterization!r}"
            )
        self.name = name
        self.value = value
        self.unit = unit
        if not isinstance(trainable, (bool, np.bool_)):
            raise TypeError(f"`trainable` must be a bool. Received: trainable={trainable!r}")
        self.trainable = bool(trainable)
        self.description = str(description)
        self.parameterization = parameterization
        self.constraint = self._normalize_constraint(constraint, value)
        self.scale = self._normalize_scale(scale, value)
        raw = self.raw_initial_value()
        if not self._representable(value, raw):
            back = np.asarray(keras.ops.convert_to_numpy(self.to_physical(raw)))
            raise ValueError(
                f"Constant '{name}' cannot be represented in float32 under "
                f"constraint={self.constraint!r} and scale={self.scale!r}: its raw value is "
                f"{raw} and maps back to {back}. Received: value={value!r}"
            )

    def _normalize_scale(self, scale, value):
        if scale is None:
            return abs(value) if value != 0 else 1.0
        scale = _check_float32("scale", _check_finite_number("scale", scale))
        if not scale > 0:
            raise ValueError(f"`scale` must be > 0. Received: scale={scale!r}")
        if scale < float(_F32.tiny):
            raise ValueError(
                f"`scale` underflows float32 (smallest normal value "
                f"{float(_F32.tiny):.4g}). Received: scale={scale!r}"
            )
        return scale

    def _normalize_constraint(self, constraint, value):
        if isinstance(constraint, np.ndarray):
            # An array of two bounds reads as the tuple (`== "none"` would
            # compare it elementwise).
            constraint = tuple(constraint.tolist()) if constraint.shape == (2,) else repr(constraint)
        if constraint is None or constraint == "none":
            return None
        if constraint == "positive":
            if value <= 0:
                raise ValueError(
                    f"Constant '{self.name}' has constraint='positive' but its "
                    f"initial `value` is not > 0. Received: value={value!r}"
                )
            if value < float(_F32.tiny):
                raise ValueError(
                    f"Constant '{self.name}' has constraint='positive' but its "
                    f"initial `value` underflows float32 (smallest normal value "
                    f"{float(_F32.tiny):.4g}). Received: value={value!r}. "
                    "Express the constant in a smaller unit."
                )
            return "positive"
        if isinstance(constraint, (tuple, list)) and len(constraint) == 2:
            lo = _check_float32("constraint[0]", _check_finite_number("constraint[0]", constraint[0]))
            hi = _check_float32("constraint[1]", _check_finite_number("constraint[1]", constraint[1]))
            if not lo < hi:
                raise ValueError(
                    f"Bounds of constant '{self.name}' must satisfy lo < hi. "
                    f"Received: constraint={tuple(constraint)!r}"
                )
            if not lo < value < hi:
                raise ValueError(
                    f"Initial `value` of constant '{self.name}' must lie "
                    f"strictly inside its bounds {(lo, hi)}. "
                    f"Received: value={value!r}"
                )
            lo32, hi32, value32 = np.float32(lo), np.float32(hi), np.float32(value)
            with np.errstate(over="ignore"):
                width32 = hi32 - lo32
            if not (lo32 < value32 < hi32 and np.isfinite(width32)):
                raise ValueError(
                    f"Bounds of constant '{self.name}' collapse in float32, the dtype "
                    f"constants are stored in: lo, value, hi become {float(lo32)!r}, "
                    f"{float(value32)!r}, {float(hi32)!r} (width {float(width32)!r}); they must stay "
                    f"strictly increasing with a finite width. Received: "
                    f"constraint={tuple(constraint)!r}, value={value!r}"
                )
            return (lo, hi)
        raise ValueError(
            "`constraint` must be None, 'positive' or a (lo, hi) tuple. "
            f"Received: constraint={constraint!r}"
        )

    @property
    def domain(self):
        """`(lo, hi)`: the values the constraint allows (open ends)."""
        if self.constraint == "positive":
            return 0.0, math.inf
        if isinstance(self.constraint, tuple):
            return float(self.constraint[0]), float(self.constraint[1])
        return -math.inf, math.inf

    @property
    def _legacy_map(self):
        """keras_hybrid 0.1's maps, through TFP (softplus or identity);
        bounded constants have their own sigmoid in both
        parameterizations."""
        return self.parameterization == "legacy" and not isinstance(self.constraint, tuple)

    def _representable(self, value, raw):
        """Whether `raw`, stored for the physical `value`, holds it in
        float32: finite, with a finite image that is not 0 for a nonzero
        `value` (an image below float32's range reads back as 0)."""
        back = np.asarray(keras.ops.convert_to_numpy(self.to_physical(keras.ops.convert_to_tensor(raw))))
        return bool(np.isfinite(raw) and np.isfinite(back) and (value == 0 or back != 0))

    @property
    def _uses_bijector(self):
        return self.parameterization == "legacy" or isinstance(self.constraint, tuple)

    @property
    def bijector(self):
        """TFP bijector mapping the raw (unconstrained) value to physics."""
        if isinstance(self.constraint, tuple):
            lo, hi = self.constraint
            return tfb.Sigmoid(low=np.float32(lo), high=np.float32(hi))
        if self.parameterization == "legacy":
            return tfb.Softplus() if self.constraint == "positive" else tfb.Identity()
        scale = tfb.Scale(np.float32(self.scale))
        return tfb.Chain([scale, tfb.Exp()]) if self.constraint == "positive" else scale

    def to_physical(self, raw):
        """Maps raw values (tensor or array, any shape) to physical values.

        Differentiable; the result is a tensor of the dtype of `raw`
        (float32 for Python numbers).
        """
        if self._legacy_map:
            return self.bijector.forward(raw)
        raw = keras.ops.convert_to_tensor(raw)
        if not keras.backend.is_float_dtype(raw.dtype):
            raw = keras.ops.cast(raw, "float32")
        if isinstance(self.constraint, tuple):
            # Measured from the nearer bound, to the precision of the
            # distance to it: TFP's float32 Sigmoid(low, high) lost about
            # 1e-4 relative within 1e-4 (hi - lo) of a bound (1e-4 in
            # (0, 1) read back as 1.0001e-4).
            lo, hi = (keras.ops.cast(b, raw.dtype) for b in self.constraint)
            width = hi - lo
            return keras.ops.where(raw > 0, hi - width * keras.ops.sigmoid(-raw),
                                   lo + width * keras.ops.sigmoid(raw))
        scale = keras.ops.cast(self.scale, raw.dtype)
        if self.constraint == "positive":
            return scale * keras.ops.exp(raw)
        return scale * raw

    def asam_scale(self, raw, eta):
        """Adaptive SAM's scale `T` of this constant, in its raw space.

        Adaptive SAM scales each parameter's share of the ball by its own
        size, `T = |w| + eta`. For a constant, the size that matters is the
        physical one: `T_c = |c| + eta * scale` (`scale`, the constant's
        typical magnitude, keeps `eta` free of units). The raw value is
        perturbed instead, so the scale is carried through the map's slope,
        `T = T_c / |dc/draw|`, which gives the same physical perturbation
        to first order. For `constraint="positive"` (`c = scale * exp(raw)`)
        this is `1 + eta * scale / c`: a raw step already is a relative
        change of the constant.

        Args:
            raw: the raw value (tensor).
            eta: the offset of the adaptive scaling.

        Returns:
            A float32 tensor shaped like `raw`.
        """
        raw = tf.cast(tf.convert_to_tensor(raw), "float32")
        value = tf.cast(self.to_physical(raw), "float32")
        if self._uses_bijector:
            slope = tf.exp(self.bijector.forward_log_det_jacobian(raw, event_ndims=0))
        elif self.constraint == "positive":
            slope = value
        else:
            slope = tf.fill(tf.shape(raw), np.float32(self.scale))
        typical = np.float32(self.scale if self.scale else 1.0)
        return (tf.abs(value) + eta * typical) / tf.maximum(tf.abs(slope), np.float32(_F32.tiny))

    def to_raw(self, value):
        """Maps physical values to raw values: the inverse of `to_physical`.

        Args:
            value: physical value(s), a number, array or tensor, which must
                satisfy the constraint (inside the bounds, or > 0).

        Returns:
            float32 NumPy array for a number or array input (computed in
            float64, then rounded), a tensor of the same dtype for a
            tensor input.
        """
        if keras.ops.is_tensor(value):
            if self._uses_bijector:
                return self.bijector.inverse(value)
            scale = keras.ops.cast(self.scale, value.dtype)
            if self.constraint == "positive":
                return keras.ops.log(value / scale)
            return value / scale
        value = np.asarray(value, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            if isinstance(self.constraint, tuple):
                lo, hi = self.constraint
                raw = np.log(value - lo) - np.log(hi - value)
            elif self.parameterization == "legacy":
                if self.constraint == "positive":
                    # softplus^-1(x) = x + log(-expm1(-x)), stable for large x.
                    raw = value + np.log(-np.expm1(-value))
                else:
                    raw = value
            elif self.constraint == "positive":
                raw = np.log(value / self.scale)
            else:
                raw = value / self.scale
        return np.asarray(raw, dtype=np.float32)

    def raw_initial_value(self):
        """Unconstrained value whose physical image is `value` (float32)."""
        if self._legacy_map:
            # The float32 TFP inverse, as keras_hybrid 0.1 initialized them.
            raw = self.bijector.inverse(np.float32(self.value))
            return np.float32(keras.ops.convert_to_numpy(raw))
        return np.float32(self.to_raw(self.value))

    def get_config(self):
        constraint = self.constraint
        if isinstance(constraint, tuple):
            constraint = list(constraint)
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "constraint": constraint,
            "trainable": self.trainable,
            "description": self.description,
            "scale": self.scale,
            "parameterization": self.parameterization,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Configs written before `parameterization` existed (keras_hybrid
        # 0.1) hold raw values of the legacy maps.
        config.setdefault("parameterization", "legacy")
        return cls(**config)

    def __repr__(self):
        unit = f" {self.unit}" if self.unit else ""
        constraint = f", constraint={self.constraint!r}" if self.constraint else ""
        return f"PhysicalConstant({self.name!r}, {self.value}{unit}{constraint})"

    def __eq__(self, other):
        return (
            isinstance(other, PhysicalConstant)
            and self.get_config() == other.get_config()
        )

    __hash__ = None
