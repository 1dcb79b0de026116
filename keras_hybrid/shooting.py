"""Multiple shooting: train an `ODELayer` on long trajectories in segments.

Single shooting integrates each observed trajectory from its first state
over the whole horizon; far from that state, small errors in a constant
compound and the loss landscape turns rugged. Multiple shooting cuts the
horizon into segments, starts each segment from a state of its own (the
observation at the segment start, or a trainable state), integrates all
segments at once (segments are folded into the batch dimension), and
penalizes the gaps between each segment's end and the next segment's start.
Prediction still integrates the whole horizon from the first state.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_hybrid import ode
from keras_hybrid._shape_checks import check_per_sample_batch, per_sample_values
from keras_hybrid.layers import CONTEXT_KEY, ODELayer
from keras_hybrid.models import SAMTrainStep, _as_sam
from keras_hybrid.sam import SAM

INITIAL_STATES = ("data", "trainable")
OFFSETS_LAYER = "segment_states"


def segment_starts(n_times, segment_length):
    """Indices of the segment starts for `n_times` time points.

    Segments of `segment_length` intervals share their end point with the
    next segment's start, so `n_times - 1` must be a multiple of
    `segment_length`.

    Args:
        n_times: number of time points of a trajectory.
        segment_length: intervals per segment.

    Returns:
        NumPy integer array of the `(n_times - 1) // segment_length`
        segment start indices.
    """
    if isinstance(segment_length, bool) or not isinstance(segment_length, (int, np.integer)) or (
        segment_length < 1
    ):
        raise ValueError(
            f"`segment_length` must be an integer >= 1. Received: segment_length={segment_length!r}"
        )
    if (n_times - 1) % segment_length:
        raise ValueError(
            "The number of time intervals must be a multiple of `segment_length` (segments "
            f"share their end points). Received: segment_length={segment_length} for "
            f"{n_times} time points ({n_times - 1} intervals)"
        )
    return np.arange(0, n_times - 1, segment_length)


def continuity_gaps(segments):
    """Gaps between each segment's end and the next segment's start.

    Args:
        segments: tensor `(batch, n_segments, segment_length + 1, n)`.

    Returns:
        Tensor `(batch, n_segments - 1, n)`: `start[s + 1] - end[s]`.
    """
    return segments[:, 1:, 0, :] - segments[:, :-1, -1, :]


def stitch(segments):
    """Joins segments `(batch, S, L + 1, n)` into `(batch, S L + 1, n)`:
    every segment without its end point, then the last segment's end."""
    shape = keras.ops.shape(segments)
    body = keras.ops.reshape(segments[:, :, :-1, :], (shape[0], -1, shape[-1]))
    return keras.ops.concatenate([body, segments[:, -1, -1:, :]], axis=1)


def _repeat_per_segment(value, n_segments):
    """`(batch, ...) -> (batch * n_segments, ...)`, each row repeated; a
    scalar (one value for every sample) stays as it is."""
    if len(getattr(value, "shape", ())) == 0:
        return value
    return keras.ops.repeat(value, n_segments, axis=0)


@keras.saving.register_keras_serializable(package="keras_hybrid")
class SegmentOffsets(keras.layers.Layer):
    """Trainable offsets of the segment initial states, one per trajectory
    and segment, initialized at zero (the observed state).

    Called with the integer indices `(batch,)` of the trajectories, it
    returns their offsets `(batch, n_segments, state_size)`; an index
    outside `[0, n_trajectories)` gets zero offsets.

    Args:
        n_trajectories: number of trajectories in the training set.
        n_segments: segments per trajectory.
        state_size: size of the state.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(self, n_trajectories, n_segments, state_size, **kwargs):
        super().__init__(**kwargs)
        self.n_trajectories = int(n_trajectories)
        self.n_segments = int(n_segments)
        self.state_size = int(state_size)
        self.offsets = self.add_weight(
            name="offsets",
            shape=(self.n_trajectories, self.n_segments, self.state_size),
            initializer="zeros",
        )

    def call(self, index):
        # A one-hot product rather than a gather: the gather's gradient is an
        # `IndexedSlices`, with which a SAM step under XLA took about 100x
        # longer (measured: 4.7 s against 0.045 s of CPU per step, 16
        # trajectories of 41 points, 2 cores). An index out of range gives a
        # zero offset.
        one_hot = keras.ops.one_hot(keras.ops.cast(index, "int32"), self.n_trajectories,
                                    dtype=self.offsets.dtype)
        return keras.ops.einsum("bn,nsk->bsk", one_hot, self.offsets)

    def get_config(self):
        config = super().get_config()
        config.update(
            n_trajectories=self.n_trajectories,
            n_segments=self.n_segments,
            state_size=self.state_size,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_hybrid")
class MultipleShooting(SAMTrainStep, keras.Model):
    """Trains an `ODELayer` by multiple shooting; predicts by single shooting.

    The model's input is the observed trajectories `(batch, T, n)` on the
    layer's `times` (or a dict, below). In training (`training=True`) each
    trajectory is cut into `S = (T - 1) / segment_length` segments; segment
    `s` starts at time index `s L` from

    ```
    y_s(t_{sL}) = obs[:, sL]                 # initial_states="data"
    y_s(t_{sL}) = obs[:, sL] + offset[i, s]  # initial_states="trainable"
    ```

    (fitted initial values, `ODELayer(initial_state=[...])`, start the
    first segment in place of the data, as they start the prediction), and
    all segments are integrated at once, folded into the batch
    dimension, on the grid `times[:L + 1] - times[0]`. The output is the
    stitched trajectory `(batch, T, n)` (each segment without its end
    point), so the compiled loss compares it with the observations, and the
    continuity penalty

    ```
    weight(step) * mean_{i, s} || y_s(t_{(s+1)L}) - y_{s+1}(t_{(s+1)L}) ||^2
    ```

    is added to the loss. With `training=False` (`predict`, `evaluate`) the
    layer integrates the whole horizon from the first observed state, so
    validation measures what the model is for.

    Schedule of the penalty weight: with `initial_states="data"` the gap is
    the misfit of each segment's end to the next observation, and a
    constant weight of 1 makes it one more data point (the default). With
    trainable initial states the segments are free at first; a weight that
    starts small and grows (e.g.
    `keras.optimizers.schedules.ExponentialDecay(0.1, 100, 2.0)`: doubling
    every 100 steps) lets the constants move before continuity is enforced;
    any `keras.optimizers.schedules.LearningRateSchedule` (or a float) is
    accepted and is evaluated at the optimizer's step.

    Under SAM the trainable segment offsets are left unperturbed (their
    layer name, `"segment_states"`, is added to `SAM.exclude`): they are
    per-trajectory estimates of the state, like the output of an encoder,
    and perturbing them perturbs the data the constants are fitted to.

    The model must be built before `compile` (as `HybridModel`): it is when
    the layer is built, or `state_size` is given, or the layer has no
    correction and the initial states come from the data.

    The vector field must not depend on absolute time (segments are
    integrated from time 0): `correction_inputs="state"` and an equation
    that ignores `t`. The time grid must be uniform.

    Unobserved values (a filler with per-value `sample_weight` 0, as from
    `kh.common_time_grid`) are fine except at a segment start with
    `initial_states="data"`: the segment would start from the filler, so
    `fit` refuses such weights (choose a `segment_length` whose starts are
    observed, or `initial_states="trainable"`).

    Per-episode constants: pass a dict input `{"trajectories": obs,
    "constants": {name: (batch,) tensor}}` (or `"context": (batch, c)`), or
    give an `encoder` that maps the observed trajectories to such a dict of
    constants; each value is repeated for every segment of its trajectory.
    With trainable initial states the input must also hold `"index"`, the
    integer index of each trajectory in the training set.

    Args:
        layer: the `ODELayer` to train (fixed-step method).
        segment_length: time intervals per segment; `T - 1` must be a
            multiple of it.
        initial_states: `"data"` or `"trainable"`. Defaults to `"data"`.
        n_trajectories: number of training trajectories; required with
            `initial_states="trainable"`. Defaults to `None`.
        continuity_weight: float >= 0 or a Keras learning-rate schedule of
            the optimizer step. Defaults to `1.0`.
        encoder: optional Keras layer or model mapping observed
            trajectories `(batch, T, n)` to a dict of per-episode constants.
            Defaults to `None`.
        sam: `SAM` settings, `None` for plain training, or `"default"` for
            `SAM()`. Defaults to `"default"`.
        state_size: size of the state, to build an unbuilt layer at once.
            Defaults to `None` (the built layer's size).
        **kwargs: base `keras.Model` arguments.

    Example:

    ```python
    layer = kh.ODELayer(pendulum, [kh.PhysicalConstant("w0", 0.5)],
                        times=np.arange(401) * 0.1, correction=net)
    shooting = kh.MultipleShooting(layer, segment_length=20, sam=kh.SAM(), state_size=2)
    shooting.compile(optimizer="adam", loss="mse")
    shooting.fit(observed, observed, epochs=300)   # observed: (N, 401, 2)
    shooting.predict(observed)                     # whole horizon from observed[:, 0]
    ```
    """

    def __init__(
        self,
        layer,
        segment_length,
        initial_states="data",
        n_trajectories=None,
        continuity_weight=1.0,
        encoder=None,
        sam="default",
        state_size=None,
        **kwargs,
    ):
        on_non_finite = kwargs.pop("on_non_finite", "warn")
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, ODELayer):
            raise TypeError(f"`layer` must be an ODELayer. Received: layer={layer!r}")
        if layer.method not in ode.TABLEAUS:
            raise ValueError(
                f"MultipleShooting needs a fixed-step method {tuple(ode.TABLEAUS)}. "
                f"Received: layer with method={layer.method!r}"
            )
        if layer.correction_inputs != "state":
            raise ValueError(
                "MultipleShooting integrates segments from time 0, so the correction must not "
                "see the time. Received: layer with "
                f"correction_inputs={layer.correction_inputs!r}"
            )
        times = np.asarray(layer.times, "float64")
        steps = np.diff(times)
        # Uniform up to float32 rounding of the times themselves (a grid
        # of step 0.01 up to 200 in float32 has steps off by 1.5e-5).
        rounding = 4 * np.finfo(np.float32).eps * np.max(np.abs(times))
        if not np.allclose(steps, steps[0], rtol=1e-4, atol=rounding):
            raise ValueError(
                "MultipleShooting needs a uniform time grid. Received: layer with times "
                f"spaced from {steps.min()} to {steps.max()}"
            )
        self.starts = segment_starts(len(times), segment_length)
        self.segment_length = int(segment_length)
        self.n_segments = len(self.starts)
        if initial_states not in INITIAL_STATES:
            raise ValueError(
                f"`initial_states` must be one of {INITIAL_STATES}. "
                f"Received: initial_states={initial_states!r}"
            )
        if initial_states == "trainable" and (
            isinstance(n_trajectories, bool)
            or not isinstance(n_trajectories, (int, np.integer))
            or n_trajectories < 1
        ):
            raise ValueError(
                "`n_trajectories` must be an integer >= 1 with initial_states='trainable'. "
                f"Received: n_trajectories={n_trajectories!r}"
            )
        if isinstance(continuity_weight, dict):
            continuity_weight = keras.optimizers.schedules.deserialize(continuity_weight)
        if not callable(continuity_weight):
            if isinstance(continuity_weight, (bool, str)) or not np.isscalar(continuity_weight) or not (
                math.isfinite(float(continuity_weight)) and float(continuity_weight) >= 0
            ):
                raise ValueError(
                    "`continuity_weight` must be a float >= 0 or a "
                    "keras.optimizers.schedules.LearningRateSchedule. "
                    f"Received: continuity_weight={continuity_weight!r}"
                )
            continuity_weight = float(continuity_weight)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        self.layer = layer
        self.initial_states = initial_states
        self.n_trajectories = None if n_trajectories is None else int(n_trajectories)
        self.continuity_weight = continuity_weight
        self.encoder = encoder
        self.segment_times = times[: self.segment_length + 1] - times[0]
        self.offsets = None  # built with the state size, in `build`
        if layer.built:
            state_size = layer.state_size
        if state_size is not None:
            self.build((None, len(times), int(state_size)))
        elif layer.correction is None and initial_states == "data":
            self.built = True  # no variables to create; the layer builds at its first call
        self.state_size = None if state_size is None else int(state_size)
        sam = SAM() if isinstance(sam, str) and sam == "default" else _as_sam(sam)
        self.sam = _exclude_offsets(sam) if initial_states == "trainable" else sam
        self.on_non_finite = on_non_finite

    def build(self, input_shape):
        shape = input_shape["trajectories"] if isinstance(input_shape, dict) else input_shape
        n = shape[-1]
        if not self.layer.built:
            self.layer.build((None, n))
        if self.encoder is not None and not self.encoder.built:
            self.encoder.build(shape)
        if self.initial_states == "trainable" and self.offsets is None:
            self.offsets = SegmentOffsets(self.n_trajectories, self.n_segments, n,
                                          name=OFFSETS_LAYER)
        self.built = True

    def compile(self, *args, **kwargs):
        if not self.built:
            raise ValueError(
                "Build MultipleShooting before `compile` (the optimizer is built for a fixed "
                "list of variables): call it once on a batch of trajectories, or pass "
                "`state_size`. Received: state_size=None with an unbuilt layer "
                f"'{self.layer.name}'"
            )
        super().compile(*args, **kwargs)

    def serving_input_signature(self):
        """What `export_saved_model` serves by default: observed
        trajectories `(batch, T, n)`, the first state of which starts the
        prediction; `None` while the state size is unknown. (Per-episode
        constants or a context come in a dict: pass `input_signature=`.)"""
        n = self.state_size or getattr(self.layer, "state_size", None)
        if n is None:
            return None
        return [tf.TensorSpec((None, len(self.layer.times), int(n)), tf.float32, name="trajectories")]

    def fit(self, *args, **kwargs):
        self._check_observed_starts(kwargs.get("sample_weight"))
        return super().fit(*args, **kwargs)

    def _check_observed_starts(self, sample_weight):
        """With `initial_states="data"` each segment starts from the
        observed state at its start: a start whose per-value weight is 0
        (an unobserved value, filled in) would start the segment from the
        filler, silently. Refused; per-sample weights cannot say."""
        if self.initial_states != "data" or sample_weight is None:
            return
        leaves = tf.nest.flatten(sample_weight)
        if len(leaves) != 1 or not hasattr(leaves[0], "shape"):
            return
        w = np.asarray(leaves[0])
        n_times = int(self.starts[-1]) + self.segment_length + 1
        if w.ndim < 2 or w.shape[1] != n_times:
            return
        # The first segment starts from fitted initial values, if any.
        checked = self.starts if self.layer.initial_state is None else self.starts[1:]
        at_starts = w[:, checked].reshape(w.shape[0], len(checked), -1)
        unobserved = np.any(at_starts == 0, axis=-1)
        if not unobserved.any():
            return
        trajectory, segment = (int(i) for i in np.argwhere(unobserved)[0])
        indices = sorted({int(checked[j]) for j in np.nonzero(unobserved.any(axis=0))[0]})
        raise ValueError(
            f"`sample_weight` is 0 at {int(unobserved.sum())} segment start(s) (first: trajectory "
            f"{trajectory}, time index {int(checked[segment])}). With initial_states='data' "
            "each segment starts from the observed state at its start, so an unobserved value "
            "would start it from its filler. Choose a `segment_length` whose starts are "
            "observed, or initial_states='trainable' (fitted starts). Received: sample_weight "
            f"with zeros at the segment starts {indices[:10]}"
            + (" ..." if len(indices) > 10 else "")
        )

    def compile_from_config(self, config):
        # Keras skips models that override `compile` when loading; this
        # `compile` only checks that the model is built, so restore it.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _unpack(self, inputs):
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - {"trajectories", "index", "constants", "context"})
            if "trajectories" not in inputs or unknown:
                raise ValueError(
                    "A dict input to MultipleShooting needs 'trajectories' and may hold "
                    f"'index', 'constants', 'context'. Received: keys {sorted(inputs)}"
                )
            return (inputs["trajectories"], inputs.get("index"), inputs.get("constants"),
                    inputs.get("context"))
        return inputs, None, None, None

    def _check_trajectories(self, observed, index, constants, context):
        shape = tuple(observed.shape)
        n = self.state_size or getattr(self.layer, "state_size", None)
        if len(shape) != 3 or shape[1] not in (None, len(self.layer.times)) or (
            n is not None and shape[2] not in (None, n)
        ):
            raise ValueError(
                f"MultipleShooting expects trajectories of shape (batch, {len(self.layer.times)}, "
                f"{n if n is not None else 'n'}): {len(self.layer.times)} time points (the "
                f"layer's times){' of states of size %d' % n if n is not None else ''}. "
                f"Received: trajectories with shape {shape}"
            )
        # Values are repeated per segment: one row cannot broadcast then.
        given = per_sample_values(constants, context, index=index)
        check_per_sample_batch(self, "trajectories", shape[0], given, broadcast=False)

    def call(self, inputs, training=None):
        observed, index, constants, context = self._unpack(inputs)
        observed = keras.ops.convert_to_tensor(observed)
        self._check_trajectories(observed, index, constants, context)
        if self.encoder is not None:
            constants = dict(constants or {}, **self.encoder(observed, training=training))
        if not training:
            return self.layer(observed[:, 0], constants=constants, context=context,
                              training=training)
        return self._segments_call(observed, index, constants, context, training)

    def segments(self, inputs, training=True):
        """Integrated segments `(batch, S, L + 1, n)` (training mode)."""
        observed, index, constants, context = self._unpack(inputs)
        observed = keras.ops.convert_to_tensor(observed)
        self._check_trajectories(observed, index, constants, context)
        if self.encoder is not None:
            constants = dict(constants or {}, **self.encoder(observed, training=training))
        return self._integrate_segments(observed, index, constants, context, training)

    def _integrate_segments(self, observed, index, constants, context, training):
        layer, n_seg = self.layer, self.n_segments
        starts = keras.ops.take(observed, self.starts, axis=1)  # (batch, S, n)
        if self.offsets is not None:
            if index is None:
                raise ValueError(
                    "MultipleShooting with initial_states='trainable' needs the trajectory "
                    "index: call it with {'trajectories': ..., 'index': ...}. Received: no "
                    "'index'"
                )
            starts = starts + keras.ops.cast(self.offsets(index), starts.dtype)
        if layer.initial_state is not None:
            # The first segment starts where prediction does: at the fitted
            # initial values (which train only through it), not the data.
            first = layer._fitted_initial_state(starts[:, 0], layer.constant_tensors(constants))
            starts = keras.ops.concatenate([first[:, None, :], starts[:, 1:]], axis=1)
        n = starts.shape[-1]
        y0 = keras.ops.reshape(starts, (-1, n))  # (batch * S, n)
        constants = {k: _repeat_per_segment(v, n_seg) for k, v in (constants or {}).items()}
        if context is not None:
            context = _repeat_per_segment(context, n_seg)
        values = layer.constant_tensors(constants)
        if layer.solve_takes_explicit_inputs() and context is not None:
            values = dict(values, **{CONTEXT_KEY: context})

        def vector_field(t, y, **constant_values):
            ctx = constant_values.pop(CONTEXT_KEY, context)
            physics, correction = layer.vector_field_parts(
                t, y, constants=constant_values, context=ctx, training=training
            )
            return physics if correction is None else physics + correction

        ys = ode.odeint(
            vector_field,
            y0,
            self.segment_times,
            method=layer.method,
            substeps=layer.substeps,
            max_step=layer.max_step,
            constants=values,
            checkpoint=layer.checkpoint,
            variables=layer.solver_variables(),
        )  # (batch * S, L + 1, n)
        return keras.ops.reshape(ys, (-1, n_seg, self.segment_length + 1, n))

    def _segments_call(self, observed, index, constants, context, training):
        segments = self._integrate_segments(observed, index, constants, context, training)
        if self.n_segments > 1:
            gaps = continuity_gaps(segments)
            self.add_loss(self._weight() * keras.ops.mean(keras.ops.square(gaps)))
        return stitch(segments)

    def _weight(self):
        if not callable(self.continuity_weight):
            return self.continuity_weight
        step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
        return keras.ops.cast(self.continuity_weight(step), "float32")

    def physical_constants(self):
        """The layer's constants, `name -> float`."""
        return self.layer.physical_constants()

    def constant_units(self):
        """The layer's units, `name -> unit string`."""
        return self.layer.units()

    def get_config(self):
        config = super().get_config()
        weight = self.continuity_weight
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.layer),
                "segment_length": self.segment_length,
                "initial_states": self.initial_states,
                "n_trajectories": self.n_trajectories,
                "continuity_weight": (
                    keras.optimizers.schedules.serialize(weight) if callable(weight) else weight
                ),
                "encoder": (
                    None if self.encoder is None else keras.saving.serialize_keras_object(self.encoder)
                ),
                "sam": None if self.sam is None else keras.saving.serialize_keras_object(self.sam),
                "on_non_finite": self.on_non_finite,
                "state_size": self.state_size,
            }
        )
        return config


def _exclude_offsets(sam):
    """`sam` with the segment offsets' layer added to `exclude`."""
    if sam is None or OFFSETS_LAYER in sam.exclude:
        return sam
    config = dict(sam.get_config(), exclude=list(sam.exclude) + [OFFSETS_LAYER])
    return SAM.from_config(config)
