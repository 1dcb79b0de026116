"""Physical constants: named, unit-carrying, constrained by reparameterization."""

import math
import numbers

import keras
import numpy as np

# TFP's bijectors give numerically careful forward/inverse maps (softplus,
# scaled sigmoid) for the unconstrained <-> physical reparameterization.
from tensorflow_probability import bijectors as tfb

_CONSTRAINTS = ("none", "positive", "bounded")


def _check_finite_number(arg, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{arg}` must be a real number. Received: {arg}={value!r} "
            f"of type {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"`{arg}` must be finite. Received: {arg}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_hybrid")
class PhysicalConstant:
    """Specification of a named physical constant of a mechanistic equation.

    The constant is stored by its `ScientificLayer` as an *unconstrained*
    trainable variable `raw`; its physical value is `bijector(raw)`:

    ```
    constraint=None       value = raw
    constraint="positive" value = softplus(raw)                 (value > 0)
    constraint=(lo, hi)   value = lo + (hi - lo) * sigmoid(raw) (lo < value < hi)
    ```

    so the constraint holds for *every* value of `raw`, including the
    perturbed weights of a sharpness-aware step (a Keras `constraint=` only
    projects after an optimizer update and would not protect that pass).

    Args:
        name: Python identifier used as the key of the constant in the
            equation's `constants` dict, e.g. `"w0"`.
        value: initial value, in physical units (`unit`).
        unit: unit string, for display and export only, e.g. `"rad/s"`.
            Defaults to `""` (dimensionless).
        constraint: `None`, `"positive"`, or a `(lo, hi)` tuple of bounds in
            physical units. Defaults to `None`.
        trainable: whether the constant is estimated during training.
            Defaults to `True`.
        description: free text shown in summaries. Defaults to `""`.

    Example:

    ```python
    w0 = PhysicalConstant("w0", 0.5, unit="rad/s", constraint="positive")
    w0.bijector.forward(w0.raw_initial_value())  # 0.5
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
    ):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                "`name` must be a Python identifier string. "
                f"Received: name={name!r}"
            )
        value = _check_finite_number("value", value)
        if not isinstance(unit, str):
            raise TypeError(f"`unit` must be a string. Received: unit={unit!r}")
        self.name = name
        self.value = value
        self.unit = unit
        self.trainable = bool(trainable)
        self.description = str(description)
        self.constraint = self._normalize_constraint(constraint, value)

    def _normalize_constraint(self, constraint, value):
        if constraint is None or constraint == "none":
            return None
        if constraint == "positive":
            if value <= 0:
                raise ValueError(
                    f"Constant '{self.name}' has constraint='positive' but its "
                    f"initial `value` is not > 0. Received: value={value!r}"
                )
            return "positive"
        if isinstance(constraint, (tuple, list)) and len(constraint) == 2:
            lo = _check_finite_number("constraint[0]", constraint[0])
            hi = _check_finite_number("constraint[1]", constraint[1])
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
            return (lo, hi)
        raise ValueError(
            "`constraint` must be None, 'positive' or a (lo, hi) tuple. "
            f"Received: constraint={constraint!r}"
        )

    @property
    def bijector(self):
        """TFP bijector mapping the raw (unconstrained) value to physics."""
        if self.constraint is None:
            return tfb.Identity()
        if self.constraint == "positive":
            return tfb.Softplus()
        lo, hi = self.constraint
        return tfb.Sigmoid(low=np.float32(lo), high=np.float32(hi))

    def raw_initial_value(self):
        """Unconstrained value whose physical image is `value` (float32)."""
        raw = self.bijector.inverse(np.float32(self.value))
        return np.float32(keras.ops.convert_to_numpy(raw))

    def to_physical(self, raw):
        """Maps a raw tensor (any shape) to physical values."""
        return self.bijector.forward(raw)

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
        }

    @classmethod
    def from_config(cls, config):
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
