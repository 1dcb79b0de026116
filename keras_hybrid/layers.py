"""Keras layers wrapping mechanistic equations with physical constants."""

import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_hybrid import ode
from keras_hybrid._shape_checks import (
    ConstantValues,
    check_correction_builds_state_shaped,
    check_not_ragged,
    check_per_sample_batch,
    per_sample_values,
    check_state_shaped,
    shape_of,
)
from keras_hybrid.constants import PhysicalConstant, _check_finite_number, _check_float32

# Raw variables of physical constants, so that a training step can tell the
# physical group from the neural one: `id(variable) -> (weak reference,
# PhysicalConstant)`. An entry goes away with its variable; the identity
# check in `_constant_spec` guards against a reused id.
_REGISTRY = {}

# The key under which a context travels with the constants of a solve that
# takes explicit inputs: not an identifier, so no constant can carry it.
CONTEXT_KEY = "<context>"


def _register(variable, spec):
    key = id(variable)

    def forget(ref, key=key):
        entry = _REGISTRY.get(key)
        if entry is not None and entry[0] is ref:
            del _REGISTRY[key]

    _REGISTRY[key] = (weakref.ref(variable, forget), spec)


def _constant_spec(variable):
    """The `PhysicalConstant` whose raw value is `variable`, or `None`."""
    entry = _REGISTRY.get(id(variable))
    if entry is None or entry[0]() is not variable:
        return None
    return entry[1]


def is_physical_variable(variable):
    """True if `variable` is the raw value of a `PhysicalConstant`."""
    return _constant_spec(variable) is not None


def _enclosing_layer_names(root, include_owner=False):
    """`id(variable) -> [names]`: the layers between `root` (excluded) and
    the layer owning the variable (included with `include_owner`),
    outermost first. Unlike a variable's path (its name scope when it was
    built), this is the layer tree as it is: a nested model rebuilt from a
    `.keras` file builds its layers outside its own scope."""
    found = {}

    def walk(layer, enclosing):
        inner = enclosing if layer is root else enclosing + [layer.name]
        for variable in list(layer._trainable_variables) + list(layer._non_trainable_variables):
            found.setdefault(id(variable), inner if include_owner else enclosing)
        for child in layer._flatten_layers(include_self=False, recursive=False):
            walk(child, inner)

    walk(root, [])
    return found


def _keyed_constant_variables(layer):
    """`(key, variable, spec)` per constant: the key is its name, or where
    several share it its variable path (`"layer_name/k"`), prefixed by the
    enclosing sub-models' names where those paths clash too
    (`"submodel/layer_name/k"`)."""
    found = [(v, _constant_spec(v)) for v in layer.weights if is_physical_variable(v)]
    names = [spec.name for _, spec in found]
    keys = [spec.name if names.count(spec.name) == 1 else variable.path for variable, spec in found]
    if len(set(keys)) < len(keys):
        enclosing = _enclosing_layer_names(layer)
        keys = [
            "/".join(enclosing.get(id(variable), []) + [key]) if keys.count(key) > 1 else key
            for key, (variable, _) in zip(keys, found)
        ]
    if len(set(keys)) < len(keys):
        # Same names all the way up (e.g. layers outside any model):
        # number them in the order of `layer.weights`.
        seen = {}
        numbered = []
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
            numbered.append(key if keys.count(key) == 1 else f"{key}#{seen[key]}")
        keys = numbered
    return [(key, variable, spec) for key, (variable, spec) in zip(keys, found)]


def physical_constants(layer):
    """Physical constants of every `ScientificLayer` in a model or layer.

    Works for any Keras model or layer (not only `HybridModel`). A name
    shared by several layers is qualified by its variable path
    (`"layer_name/w0"`), and by the enclosing sub-models' names where
    layers of the same name in different sub-models hold it
    (`"submodel/layer_name/w0"`).

    Returns:
        Dict `name -> float` of physical values.
    """
    return {
        key: float(keras.ops.convert_to_numpy(spec.to_physical(variable.value)))
        for key, variable, spec in _keyed_constant_variables(layer)
    }


def constant_units(layer):
    """Units of the physical constants in a model or layer, `name -> unit`."""
    return {key: spec.unit for key, _, spec in _keyed_constant_variables(layer)}


def constant_to_raw(spec, value):
    """Raw (unconstrained) value whose physical image under `spec` is
    `value` (the inverse of `spec.to_physical`), as float32."""
    inverse = getattr(spec, "to_raw", None)
    raw = inverse(value) if inverse is not None else spec.bijector.inverse(np.float32(value))
    return np.float32(keras.ops.convert_to_numpy(raw))


def _as_constant(spec):
    if isinstance(spec, PhysicalConstant):
        return spec
    if isinstance(spec, dict):
        return PhysicalConstant.from_config(spec)
    raise TypeError(
        "Each entry of `constants` must be a `PhysicalConstant` (or its "
        f"config dict). Received: {spec!r}"
    )


def _function_name(fn):
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _shapes(tensors):
    return [tuple(getattr(t, "shape", ())) for t in tensors]


# Errors raised by an equation that cannot be traced into a graph (NumPy on
# symbolic tensors, Python control flow on tensor values) or that does not
# fit the shapes it receives.
_EQUATION_ERRORS = (TypeError, ValueError, NotImplementedError, IndexError, AttributeError,
                    # Run eagerly, shapes that do not fit fail in the op itself.
                    tf.errors.InvalidArgumentError)


def call_equation(layer, equation, args, constants, what="inputs"):
    """Calls `equation(*args, constants)`; re-raises failures with a message
    naming the equation, the layer and the shapes received."""
    try:
        return equation(*args, ConstantValues(constants, layer, equation))
    except _EQUATION_ERRORS as error:
        if getattr(error, "_keras_hybrid_wrapped", False):
            raise
        given = {name: tuple(getattr(value, "shape", ())) for name, value in sorted(constants.items())}
        detail = error.message if isinstance(error, tf.errors.OpError) else error
        message = (
            f"The equation `{_function_name(equation)}` of layer '{layer.name}' failed on "
            f"{what} with shapes {_shapes(args)} and constants of shapes {given} (a "
            "constant given per sample is `(batch,)`, or `(batch, 1)` for an equation "
            "written on whole arrays): "
            f"{type(error).__name__}: {detail}\nEquations are traced into a TensorFlow graph: "
            "write them with `keras.ops` on tensors (e.g. `keras.ops.sin`, not `np.sin`), "
            "without Python `if`/`while`/`bool()` on tensor values (use `keras.ops.where` "
            "or `keras.ops.cond`), and check that the input shapes are the ones the "
            "equation indexes."
        )
        new = (ValueError if isinstance(error, (ValueError, IndexError, tf.errors.OpError))
               else TypeError)(message)
        new._keras_hybrid_wrapped = True
        raise new from error


def _serialize_function(fn, arg):
    if not callable(fn):
        raise TypeError(f"`{arg}` must be callable. Received: {arg}={fn!r}")
    return keras.saving.serialize_keras_object(fn)


def _warn_if_not_reloadable(fn, serialized, arg, stacklevel):
    """Warns when Keras cannot find `fn` again from its config: the model
    then saves without complaint, but the file does not load."""
    if getattr(fn, "__name__", "") == "<lambda>":
        return  # Keras warns about lambdas itself (they load with safe_mode=False)
    try:
        found = keras.saving.deserialize_keras_object(serialized)
    except Exception:  # whatever Keras raises for a function it cannot locate
        found = None
    if found is None:
        warnings.warn(
            f"`{arg}` {_function_name(fn)!r} is not registered with Keras: the model trains, "
            "predicts and exports, but its `.keras` file will not load, and "
            "`kh.profile_likelihood` (which copies the model) cannot run. Decorate it with "
            "`@keras.saving.register_keras_serializable()`.",
            stacklevel=stacklevel,
        )
    elif found is not fn:
        warnings.warn(
            f"`{arg}` {_function_name(fn)!r} is registered with Keras under a name that another "
            f"function holds ({serialized.get('config')!r}, from {_function_name(found)!r} in "
            f"{getattr(found, '__module__', '?')}): a `.keras` file of this model, and the copies "
            "`kh.profile_likelihood` makes, would use that other function. Register it under a "
            "name of its own (`register_keras_serializable(package=..., name=...)`).",
            stacklevel=stacklevel,
        )


@keras.saving.register_keras_serializable(package="keras_hybrid")
class ScientificLayer(keras.layers.Layer):
    """A mechanistic (algebraic) equation with trainable physical constants.

    The layer computes

    ```
    outputs = equation(*inputs, constants)
    ```

    where `constants` is a dict `name -> physical value` built from the
    layer's `PhysicalConstant`s (each stored unconstrained and mapped through
    its constraint, see `PhysicalConstant`). Any constant can instead be
    supplied per sample at call time, e.g. by an encoder network:
    `layer(x, constants={"k": k_tensor})`; supplied tensors are passed to the
    equation as they are and must broadcast against its other tensors.

    Args:
        equation: function `equation(*inputs, constants) -> outputs` written
            with `keras.ops`. To save and reload the model, register it with
            `@keras.saving.register_keras_serializable()`.
        constants: list of `PhysicalConstant`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    ```python
    @keras.saving.register_keras_serializable()
    def ohm(current, constants):
        return constants["R"] * current

    layer = ScientificLayer(
        ohm, [PhysicalConstant("R", 10.0, unit="ohm", constraint="positive")]
    )
    layer(np.ones((2, 1), "float32"))  # 10 V
    layer.physical_constants()         # {"R": 10.0}
    ```
    """

    def __init__(self, equation, constants, **kwargs):
        super().__init__(**kwargs)
        if isinstance(equation, dict):
            equation = keras.saving.deserialize_keras_object(equation)
            _serialize_function(equation, "equation")
        else:
            # Pointing at the user's line, past the subclasses' __init__s.
            inits = sum(1 for c in type(self).__mro__
                        if issubclass(c, ScientificLayer) and "__init__" in vars(c))
            _warn_if_not_reloadable(equation, _serialize_function(equation, "equation"), "equation",
                                    stacklevel=2 + inits)
        self.equation = equation
        if isinstance(constants, (PhysicalConstant, dict)):
            constants = [constants]
        self.constant_specs = [_as_constant(c) for c in constants]
        names = [c.name for c in self.constant_specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Constant names must be unique. Received duplicates: {duplicates}"
            )
        self._raw = {}
        self._initial_state_specs = []
        for spec in self.constant_specs:
            self._add_constant(spec)

    def _add_constant(self, spec):
        # Created trainable and frozen afterwards: a constant keeps its place
        # in `weights` whether it was frozen at construction or later
        # (Keras lists the variables created non-trainable last, so a copy
        # rebuilt from the config would receive `get_weights()` in another
        # order), and it can be freed again.
        variable = self.add_weight(
            name=spec.name,
            shape=(),
            initializer=keras.initializers.Constant(spec.raw_initial_value()),
            trainable=True,
            dtype="float32",
        )
        # A frozen layer (`trainable=False` in its constructor or config)
        # freezes its constants, as Keras freezes a Dense layer's kernel.
        variable.trainable = spec.trainable and self.trainable
        _register(variable, spec)
        self._raw[spec.name] = variable

    def _all_specs(self):
        # The equation's constants, then the fitted initial state (ODELayer).
        return self.constant_specs + [s for s in self._initial_state_specs if s is not None]

    @property
    def constant_names(self):
        return [c.name for c in self.constant_specs]

    def constant_tensors(self, constants=None):
        """Dict of physical values used by the equation.

        Args:
            constants: optional dict `name -> tensor` overriding the layer's
                own constants (per-sample values inferred by a network).
        """
        constants = dict(constants or {})
        names = [spec.name for spec in self._all_specs()]
        unknown = sorted(set(constants) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown constant names {unknown} for layer '{self.name}'. "
                f"Its constants are {names}."
            )
        values = {}
        for spec in self._all_specs():
            if spec.name in constants:
                values[spec.name] = keras.ops.cast(constants[spec.name], self.compute_dtype)
            else:
                raw = keras.ops.cast(self._raw[spec.name], "float32")
                values[spec.name] = keras.ops.cast(spec.to_physical(raw), self.compute_dtype)
        return values

    def _constant_variable(self, name, arg="name"):
        if name not in self._raw:
            raise ValueError(
                f"Unknown constant `{arg}` for layer '{self.name}'. Its constants are "
                f"{self.constant_names}. Received: {arg}={name!r}"
            )
        return self._raw[name]

    def set_constant(self, name, value):
        """Sets constant `name` to the physical `value` (in its unit).

        The raw variable is assigned the inverse image of `value`, so the
        value must satisfy the constant's constraint. Saved with the
        weights, like any trained value.

        Args:
            name: the constant's name.
            value: new physical value, finite and inside the constraint.
        """
        variable = self._constant_variable(name)
        spec = _constant_spec(variable)
        try:
            value = _check_float32("value", _check_finite_number("value", value))
        except (TypeError, ValueError) as error:
            raise type(error)(f"Constant '{name}' of layer '{self.name}': {error}") from None
        constraint = spec.constraint
        if (constraint == "positive" and not value > 0) or (
            isinstance(constraint, tuple) and not constraint[0] < value < constraint[1]
        ):
            raise ValueError(
                f"`value` of constant '{name}' must satisfy its constraint {constraint!r}. "
                f"Received: value={value!r}"
            )
        raw = constant_to_raw(spec, value)
        # Near float32's limits the raw value, or its image read back,
        # can overflow or vanish: refused rather than stored as inf or 0.
        if not spec._representable(value, raw):
            raise ValueError(
                f"`value` of constant '{name}' cannot be stored in float32 under its scale "
                f"{spec.scale!r} (its stored or read-back value overflows, or reads back as "
                f"0). Express the constant in another unit. Received: value={value!r}"
            )
        if isinstance(constraint, tuple):
            # Next to a bound the float32 value reads back as the bound itself.
            back = float(keras.ops.convert_to_numpy(spec.to_physical(np.float32(raw))))
            if not constraint[0] < back < constraint[1]:
                raise ValueError(
                    f"`value` of constant '{name}' is too close to a bound of its constraint "
                    f"{constraint!r} to be held in float32: it reads back as {back!r}. "
                    f"Received: value={value!r}"
                )
        variable.assign(raw)

    def set_constant_trainable(self, name, trainable):
        """Freezes (`trainable=False`) or frees constant `name`.

        The flag is part of the layer's config, so a frozen constant stays
        frozen after saving and loading, and can be freed there too:
        freeze, refit, free. The next `fit` of a `HybridModel`, `SAMModel`
        or `MultipleShooting` trains the new set of variables (a plain
        `keras.Model` needs `compile` again). The optimizer stays the one
        built before: recompile (a fresh optimizer) after freeing a
        constant that was frozen when it was built, and before saving a
        model whose optimizer state should resume (a loaded optimizer is
        built for the trainable variables at load time). A constant freed
        in a frozen layer (`layer.trainable = False`) is trained once the
        layer is thawed.

        Args:
            name: the constant's name.
            trainable: bool.
        """
        variable = self._constant_variable(name)
        if not isinstance(trainable, bool):
            raise TypeError(f"`trainable` must be a bool. Received: trainable={trainable!r}")
        old = _constant_spec(variable)
        spec = PhysicalConstant.from_config({**old.get_config(), "trainable": trainable})
        self.constant_specs = [spec if c is old else c for c in self.constant_specs]
        # A fitted initial state's specs (`ODELayer`), which its config lists.
        for specs in (self._initial_state_specs, getattr(self, "initial_state", None) or []):
            specs[:] = [spec if c is old else c for c in specs]
        _register(variable, spec)
        variable.trainable = trainable and self.trainable

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # Keras sets every variable created trainable to `value`: a
        # constant frozen by its own flag stays frozen when its layer (or
        # a model around it) is frozen and thawed.
        keras.layers.Layer.trainable.fset(self, value)
        for spec in self._all_specs() if hasattr(self, "_raw") else ():
            if not spec.trainable:
                self._raw[spec.name].trainable = False

    def physical_constants(self):
        """Current physical values as a dict `name -> float`."""
        return {
            spec.name: float(keras.ops.convert_to_numpy(spec.to_physical(self._raw[spec.name].value)))
            for spec in self._all_specs()
        }

    def save_own_variables(self, store):
        """Saves the raw variables and, next to them, each constant's
        physical value (`"<name>:physical"`), so that a file loads into a
        layer whose constant has another constraint or parameterization."""
        super().save_own_variables(store)
        for spec in self._all_specs():
            value = spec.to_physical(self._raw[spec.name].value)
            store[f"{spec.name}:physical"] = np.asarray(keras.ops.convert_to_numpy(value), "float64")

    def load_own_variables(self, store):
        """Loads raw variables; converts those saved under another map.

        A raw value is kept bit for bit when this layer's constant maps it
        to the physical value saved with it. Otherwise (the file was saved
        under another constraint, scale or parameterization) the saved
        physical value is converted with `to_raw`. Files without physical
        values (keras_hybrid 0.1) hold raw values of the legacy map under
        the same constraint.
        """
        variables = self._trainable_variables + self._non_trainable_variables
        raw_keys = [k for k in store.keys() if not str(k).endswith(":physical")]
        if len(raw_keys) != len(variables):
            raise ValueError(
                f"Layer '{self.name}' expected {len(variables)} variables, but the "
                f"weights file lists {len(raw_keys)} for it."
            )
        for i, variable in enumerate(variables):
            raw = np.asarray(store[f"{i}"])
            spec = _constant_spec(variable)
            if spec is not None:
                raw = self._converted_raw(spec, raw, store)
            variable.assign(raw)

    def _converted_raw(self, spec, raw, store):
        key = f"{spec.name}:physical"
        if key in list(store.keys()):  # Keras 3.4-3.6 stores lack `__contains__`
            physical = np.asarray(store[key], "float64")
        elif spec.parameterization == "legacy":
            return raw
        else:
            legacy = PhysicalConstant.from_config(
                {**spec.get_config(), "parameterization": "legacy", "value": spec.value}
            )
            physical = np.asarray(keras.ops.convert_to_numpy(legacy.to_physical(raw)), "float64")
        current = np.asarray(keras.ops.convert_to_numpy(spec.to_physical(raw)), "float64")
        if np.allclose(current, physical, rtol=1e-6, atol=0.0):
            return raw
        converted = spec.to_raw(physical)
        if not np.all(np.isfinite(converted)):
            raise ValueError(
                f"Constant '{spec.name}' of layer '{self.name}' was saved with the value "
                f"{physical.tolist()}, which its constraint={spec.constraint!r} cannot hold."
            )
        return converted

    def units(self):
        """Dict `name -> unit string`."""
        return {spec.name: spec.unit for spec in self._all_specs()}

    def _check_input_shapes(self, inputs):
        # The feature sizes seen at the first call (e.g. while building a
        # functional model) are the ones the equation was written for.
        check_not_ragged(self, inputs)
        received = [(len(s), s[-1] if s else None) for s in _shapes(inputs)]
        expected = getattr(self, "_input_signature", None)
        if expected is None:
            object.__setattr__(self, "_input_signature", received)
            object.__setattr__(self, "_input_shapes", _shapes(inputs))
            return
        compatible = len(expected) == len(received) and all(
            rank == r_rank and (last is None or r_last is None or last == r_last)
            for (rank, last), (r_rank, r_last) in zip(expected, received)
        )
        if not compatible:
            raise ValueError(
                f"ScientificLayer '{self.name}' (equation `{_function_name(self.equation)}`) "
                f"was first called with {len(expected)} input(s) of shapes "
                f"{self._input_shapes}; the rank and last dimension of each input must stay "
                f"the same. Received: inputs with shapes {_shapes(inputs)}"
            )

    def call(self, *inputs, constants=None):
        self._check_input_shapes(inputs)
        if constants and inputs:
            # Otherwise a constant with 3 rows for 4 samples broadcasts
            # into a (4, 3) output, silently.
            shape = shape_of(inputs[0])
            check_per_sample_batch(self, "the first input", shape[0] if shape else None,
                                   per_sample_values(constants))
        return call_equation(self, self.equation, inputs, self.constant_tensors(constants))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "equation": _serialize_function(self.equation, "equation"),
                "constants": [c.get_config() for c in self.constant_specs],
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_hybrid")
class ODELayer(ScientificLayer):
    """Integrates a mechanistic ODE, optionally with a neural correction.

    Given an initial state `y0` of shape `(batch, n)`, the layer returns the
    trajectory of shape `(batch, len(times), n)` (`y0` first) of

    ```
    dy/dt = equation(t, y, constants) + correction([y, (t), (context)])
    ```

    the hybrid form in which a network supplies what the physics misses.
    Fixed-step methods loop with a bounded `tf.while_loop` (no
    Python-unrolled time steps), so the layer compiles quickly under
    `jit_compile=True`.

    Args:
        equation: vector field `equation(t, y, constants) -> dy/dt`, written
            with `keras.ops`; `y` has shape `(batch, n)`. Register it for
            saving (`keras.saving.register_keras_serializable`).
        constants: list of `PhysicalConstant`.
        times: 1-D increasing time points, in the time unit of the
            constants; `times[0]` is the time of `y0`. Far from 0 a
            float32 time is coarse (near 1e6 it is resolved to 0.0625):
            the layer warns when the time an equation reads would be
            rounded by more than 1 % of a solver step.
        method: `"euler"`, `"midpoint"`, `"heun"`, `"rk4"`, `"dopri5"` or
            `"bdf"`. Defaults to `"rk4"`.
        substeps: fixed-step solver steps between consecutive time points.
            Defaults to `1`.
        max_step: fixed-step methods only: `None`, or the longest solver
            step, in the time unit of `times`. Give it when the time
            points are unevenly spaced: one `substeps` for every interval
            integrates a long gap with steps as long as the gap, where
            `max_step` splits each interval into `ceil(dt / max_step)`
            steps. (`dy/dt = -0.5 y` observed at t = 0, 0.1, 5, 5.05:
            RK4 gives y(5) = 0.572 with one step per interval, 0.08209
            with `max_step=0.1`; exactly, exp(-2.5) = 0.08208.) Defaults
            to `None`.
        correction: optional Keras layer or model mapping the state (and the
            time, see `correction_inputs`) to a `(batch, n)` correction of
            the vector field. Defaults to `None`.
        correction_inputs: `"state"` (the correction sees `y`) or
            `"state_and_time"` (it sees `concat([y, t])`). Defaults to
            `"state"`. A per-sample `context` tensor passed at call time
            (e.g. a latent code from an encoder) is appended to either.
        context_size: width of that `context`, needed to build the
            correction before the first call. Defaults to `0` (none).
        rtol: relative tolerance for adaptive methods. Defaults to `1e-6`.
        atol: absolute tolerance for adaptive methods. Defaults to `1e-8`.
        checkpoint: fixed-step methods only: `None`, or the number of time
            intervals per checkpointed segment. The backward pass then
            re-integrates each segment instead of storing every step, so
            the memory of a training step grows with `checkpoint` rather
            than with `len(times)` (see `odeint`). Defaults to `None`.
        initial_state: `None` (the input `y0` is the initial state) or a
            list with one entry per state component: a `PhysicalConstant`
            (that component of `y0` is fitted, one value shared by every
            trajectory) or `None` (taken from the input). The input's
            fitted columns are ignored. Fitted initial values are physical
            constants like the others: `physical_constants(model)` lists
            them, SAM puts them in its physical group (they are physical
            quantities, not network weights, so `perturb="neural"` leaves
            them unperturbed) and they can be given per trajectory at call
            time, `layer(y0, constants={"T0": t0_per_sample})`, e.g. from
            an `Embedding` of the trajectory id. Defaults to `None`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    ```python
    @keras.saving.register_keras_serializable()
    def pendulum(t, y, c):
        theta, omega = y[..., 0], y[..., 1]
        return keras.ops.stack([omega, -c["w0"] ** 2 * keras.ops.sin(theta)], -1)

    layer = ODELayer(
        pendulum,
        [PhysicalConstant("w0", 0.5, unit="rad/s", constraint="positive")],
        times=np.arange(50) * 0.05,
        correction=keras.Sequential([keras.layers.Dense(64, "tanh"),
                                     keras.layers.Dense(2)]),
    )
    trajectory = layer(y0)  # (batch, 50, 2)

    # A cooling curve whose first reading is as noisy as the others:
    # fit the initial temperature too.
    @keras.saving.register_keras_serializable()
    def newton(t, y, c):  # dT/dt = -k (T - 20 degC)
        return -c["k"] * (y - 20.0)

    cooling = ODELayer(
        newton,
        [PhysicalConstant("k", 0.1, unit="1/min", constraint="positive")],
        times=np.arange(30.0),
        initial_state=[PhysicalConstant("T0", 90.0, unit="degC")],
    )
    ```
    """

    def __init__(
        self,
        equation,
        constants,
        times,
        method="rk4",
        substeps=1,
        max_step=None,
        correction=None,
        correction_inputs="state",
        context_size=0,
        rtol=1e-6,
        atol=1e-8,
        checkpoint=None,
        initial_state=None,
        **kwargs,
    ):
        super().__init__(equation, constants, **kwargs)
        self._set_initial_state(initial_state)
        self.checkpoint = ode.check_checkpoint(checkpoint)
        if self.checkpoint is not None and method in ode.ADAPTIVE_METHODS:
            raise ValueError(
                "`checkpoint` applies to fixed-step methods only. "
                f"Received: checkpoint={checkpoint!r} with method={method!r}"
            )
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 0:
            raise ValueError(
                f"`context_size` must be an integer >= 0. Received: context_size={context_size!r}"
            )
        self.context_size = context_size
        self._times = ode._check_times(times, "times")
        if method not in ode.METHODS:
            raise ValueError(f"`method` must be one of {ode.METHODS}. Received: method={method!r}")
        if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
            raise ValueError(f"`substeps` must be an integer >= 1. Received: substeps={substeps!r}")
        self.max_step = ode.check_max_step(max_step, method)
        if correction_inputs not in ("state", "state_and_time"):
            raise ValueError(
                "`correction_inputs` must be 'state' or 'state_and_time'. "
                f"Received: correction_inputs={correction_inputs!r}"
            )
        if isinstance(correction, dict):
            correction = keras.saving.deserialize_keras_object(correction)
        if correction is not None and not isinstance(correction, keras.layers.Layer):
            raise TypeError(
                "`correction` must be a Keras layer or model. "
                f"Received: correction={correction!r}"
            )
        self.method = method
        self.substeps = substeps
        note = ode.time_resolution_note(self.times, substeps, self.max_step, self.compute_dtype)
        if note is not None:
            warnings.warn(f"ODELayer '{self.name}': {note}", stacklevel=2)
        self.correction = correction
        self.correction_inputs = correction_inputs
        self.rtol = float(rtol)
        self.atol = float(atol)

    # Settings traced into the models built on the layer: changed on a
    # built layer, the layer's own calls would follow and the models'
    # cached functions would not.
    _FIXED_ONCE_BUILT = ("method", "substeps", "max_step", "rtol", "atol", "checkpoint",
                         "correction_inputs", "context_size")

    def __setattr__(self, name, value):
        if name in self._FIXED_ONCE_BUILT and getattr(self, "built", False):
            raise AttributeError(
                f"`{name}` of ODELayer '{self.name}' cannot be changed once the layer is "
                "built: the models built on it have traced their functions with it. Make a "
                f"copy with the trained values instead: `layer.with_times(layer.times, "
                f"{name}=...)` (or `kh.with_times(model, times, {name}=...)`). "
                f"Received: {name}={value!r}"
            )
        super().__setattr__(name, value)

    @property
    def times(self):
        """The time points of the returned trajectories (read-only: see
        `with_times`)."""
        return self._times

    @times.setter
    def times(self, value):
        raise AttributeError(
            f"The times of ODELayer '{self.name}' cannot be changed: the models built on it "
            "have traced their output shape and their predict function for them (they would "
            "go on returning the old trajectory). For other times (e.g. a forecast beyond "
            "the training horizon), use `layer.with_times(times)`, a copy with the trained "
            "constants and correction, or `kh.with_times(model, times)` for a whole model. "
            f"Received: times of shape {np.shape(value)}"
        )

    def with_times(self, times, **kwargs):
        """A copy of this layer returning trajectories at other `times`,
        with the current (trained) constants and correction weights.

        The copy is independent: training one does not change the other.

        Args:
            times: 1-D increasing time points (`times[0]` is the time of
                `y0`).
            **kwargs: other constructor arguments to change (e.g.
                `max_step` for long gaps, `checkpoint`).

        Returns:
            A new `ODELayer`, built when this one is.

        Example:

        ```python
        forecast = layer.with_times(np.linspace(0.0, 20.0, 401))
        trajectory = forecast(y0)   # (batch, 401, n), beyond the training horizon
        ```
        """
        config = self.get_config()
        config.pop("name", None)  # a fresh name: both may live in one model
        unknown = sorted(set(kwargs) - set(config) - {"name"})
        if unknown:
            raise TypeError(
                f"`with_times` got arguments that `{self.__class__.__name__}` does not take: "
                f"{unknown}. Its arguments: {sorted(set(config) - {'times'})}."
            )
        # Checked here: `from_config` would wrap the error in a TypeError.
        config.update(times=ode._check_times(times, "times"), equation=self.equation, **kwargs)
        try:
            copy = self.__class__.from_config(config)
        except TypeError as error:
            # Keras's `from_config` rewraps the constructor's own error
            # (`max_step=-1.0`) with the whole config: raise that error.
            cause = error.__context__
            if isinstance(cause, (TypeError, ValueError)) and "Error when deserializing" in str(error):
                raise cause.with_traceback(None) from None
            raise
        if self.built:
            copy.build((None, self.state_size))
            copy.set_weights(self.get_weights())
        return copy

    def _set_initial_state(self, initial_state):
        if initial_state is None:
            self._initial_state_specs = []
            self.initial_state = None
            return
        if isinstance(initial_state, (PhysicalConstant, dict)) or not isinstance(
            initial_state, (list, tuple)
        ):
            raise TypeError(
                "`initial_state` must be None or a list with one `PhysicalConstant` "
                f"or None per state component. Received: initial_state={initial_state!r}"
            )
        specs = [None if spec is None else _as_constant(spec) for spec in initial_state]
        if all(spec is None for spec in specs):
            raise ValueError(
                "`initial_state` must contain at least one `PhysicalConstant` (use "
                f"initial_state=None to take the input as it is). Received: "
                f"initial_state={initial_state!r}"
            )
        names = [spec.name for spec in self.constant_specs + [s for s in specs if s]]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                "Names of `initial_state` constants must differ from each other and "
                f"from the equation's constants. Received duplicates: {duplicates}"
            )
        self._initial_state_specs = specs
        self.initial_state = specs
        for spec in specs:
            if spec is not None:
                self._add_constant(spec)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"ODELayer '{self.name}' expects an initial state of shape "
                f"(batch, n). Received: input_shape={tuple(input_shape)}"
            )
        if self.initial_state is not None and len(self.initial_state) != input_shape[-1]:
            raise ValueError(
                f"ODELayer '{self.name}' has initial_state with {len(self.initial_state)} "
                f"entries, one per state component, but its input has "
                f"{input_shape[-1]} components. Received: input_shape={tuple(input_shape)}"
            )
        extra = (1 if self.correction_inputs == "state_and_time" else 0) + self.context_size
        features = (input_shape[0], input_shape[-1] + extra)
        if self.correction is not None and not self.correction.built:
            self.correction.build(features)
        if self.correction is not None:
            check_correction_builds_state_shaped(self, input_shape, features)
        self.state_size = int(input_shape[-1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.times), input_shape[-1])

    def correction_term(self, t, y, context=None, training=None):
        """The neural correction of the vector field at `(t, y)` (or `None`)."""
        if self.correction is None:
            return None
        features = [y]
        if self.correction_inputs == "state_and_time":
            features.append(keras.ops.ones_like(y[..., :1]) * keras.ops.cast(t, y.dtype))
        if context is not None:
            features.append(keras.ops.cast(context, y.dtype))
        features = features[0] if len(features) == 1 else keras.ops.concatenate(features, axis=-1)
        term = self.correction(features, training=training)
        check_state_shaped(self, f"The correction '{self.correction.name}'", y, term, "a correction")
        return term

    def vector_field_parts(self, t, y, constants=None, context=None, training=None):
        """`(physics, correction)` terms of the vector field at `(t, y)`.

        Useful to measure the network's share of the dynamics,
        `||correction|| / ||physics + correction||`.
        """
        values = self.constant_tensors(constants)
        physics = self._physics(t, y, {name: values[name] for name in self.constant_names})
        return physics, self.correction_term(t, y, context=context, training=training)

    def _physics(self, t, y, values):
        dydt = call_equation(self, self.equation, (t, y), values, what="(t, y)")
        check_state_shaped(self, f"The equation `{_function_name(self.equation)}`", y, dydt, "dy/dt")
        return dydt

    def solve_takes_explicit_inputs(self):
        """True when the solve differentiates only what it is given: a
        checkpointed segment, or TFP's adjoint (adaptive methods). The
        context and the correction's weights are then passed to it
        explicitly; captured, they would get no gradient (an encoder
        giving the context would not train, nor would a SAM step's
        perturbed weights)."""
        return self.checkpoint is not None or self.method in ode.ADAPTIVE_METHODS

    def solver_variables(self):
        """Variables the solve is given explicitly (the correction's, see
        `solve_takes_explicit_inputs`), or `None`."""
        if not self.solve_takes_explicit_inputs() or self.correction is None:
            return None
        return self.correction.variables

    def call(self, y0, constants=None, context=None, training=None):
        if y0.shape[-1] is not None and hasattr(self, "state_size") and y0.shape[-1] != self.state_size:
            raise ValueError(
                f"ODELayer '{self.name}' was built for states of size "
                f"{self.state_size}. Received: y0 with shape {tuple(y0.shape)}"
            )
        if (context is None) != (self.context_size == 0) or (
            context is not None and context.shape[-1] not in (None, self.context_size)
        ):
            raise ValueError(
                f"ODELayer '{self.name}' has context_size={self.context_size}. "
                f"Received: context with shape {None if context is None else tuple(context.shape)}"
            )
        check_per_sample_batch(self, "y0", y0.shape[0], per_sample_values(constants, context))
        if context is not None:
            if len(context.shape) != 2:
                raise ValueError(
                    f"ODELayer '{self.name}' takes a context of shape (batch, {self.context_size}). "
                    f"Received: context with shape {tuple(context.shape)}"
                )
            if context.shape[0] == 1:
                # One row for every sample (the correction concatenates it
                # with the state, which does not broadcast).
                context = keras.ops.broadcast_to(context, (keras.ops.shape(y0)[0], self.context_size))
        values = self.constant_tensors(constants)
        if self.initial_state is not None:
            y0 = self._fitted_initial_state(y0, values)
        values = {name: values[name] for name in self.constant_names}
        explicit_context = self.solve_takes_explicit_inputs() and context is not None
        if explicit_context:
            values = dict(values, **{CONTEXT_KEY: context})

        self._check_no_random_layers_in_adaptive_training(training)

        # Constants go through `odeint(constants=...)` so that the adaptive
        # (TFP adjoint) solvers differentiate them exactly.
        def vector_field(t, y, **constant_values):
            ctx = constant_values.pop(CONTEXT_KEY) if explicit_context else context
            dydt = self._physics(t, y, constant_values)
            correction = self.correction_term(t, y, context=ctx, training=training)
            return dydt if correction is None else dydt + correction

        return ode.odeint(
            vector_field,
            y0,
            self.times,
            method=self.method,
            substeps=self.substeps,
            max_step=self.max_step,
            rtol=self.rtol,
            atol=self.atol,
            constants=values,
            checkpoint=self.checkpoint,
            variables=self.solver_variables(),
        )

    def _check_no_random_layers_in_adaptive_training(self, training):
        if training is not True or self.method not in ode.ADAPTIVE_METHODS or self.correction is None:
            return
        random = sorted(layer.name for layer in self.correction._flatten_layers(include_self=True)
                        if getattr(layer, "_seed_generators", None))
        if random:
            raise ValueError(
                f"ODELayer '{self.name}' with method={self.method!r} cannot train a correction "
                f"with random layers ({random}): they draw new values at every evaluation of "
                "the vector field, which the adaptive step control and the adjoint solve take "
                "for one fixed function. Use a fixed-step method ('rk4', with `checkpoint` for "
                "long trajectories), or remove the random layers."
            )

    def _fitted_initial_state(self, y0, values):
        columns = []
        for i, spec in enumerate(self.initial_state):
            observed = y0[:, i]
            if spec is None:
                columns.append(observed)
            else:
                shape = shape_of(values[spec.name])
                if len(shape) > 2 or (len(shape) == 2 and shape[1] not in (None, 1)):
                    # Flattened, (batch, 2) would be 2 * batch values.
                    raise ValueError(
                        f"ODELayer '{self.name}': the fitted initial state {spec.name!r} takes one "
                        "value per trajectory: a scalar, (batch,) or (batch, 1). Received: "
                        f"constants[{spec.name!r}] with shape {shape}"
                    )
                value = keras.ops.reshape(keras.ops.cast(values[spec.name], y0.dtype), (-1,))
                columns.append(keras.ops.zeros_like(observed) + value)
        return keras.ops.stack(columns, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_state": (
                    None
                    if self.initial_state is None
                    else [None if s is None else s.get_config() for s in self.initial_state]
                ),
                "times": np.asarray(self.times).tolist(),
                "method": self.method,
                "substeps": self.substeps,
                "max_step": self.max_step,
                "correction": (
                    None
                    if self.correction is None
                    else keras.saving.serialize_keras_object(self.correction)
                ),
                "correction_inputs": self.correction_inputs,
                "context_size": self.context_size,
                "rtol": self.rtol,
                "atol": self.atol,
                "checkpoint": self.checkpoint,
            }
        )
        return config
