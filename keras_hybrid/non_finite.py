"""The non-finite policy inside the training step.

A step is applied only if it keeps the model finite:

1. the loss of the step (and, with SAM, the gradient used) must be finite;
2. the update must leave every weight and every optimizer variable
   (moments, iteration count, loss scale) finite.

(2) is checked after the optimizer has run: the state read before the
update is kept (TensorFlow's resource variables guarantee that a value read
before an update does not see it), and assigned back if anything became
non-finite. A skipped step therefore leaves the weights, the optimizer slots
and `optimizer.iterations` exactly as they were.

Each step also writes a few scalars (`StepRecord`) that `NonFiniteGuard`
reads once per epoch, so nothing is read back to the host per batch.
"""

import numpy as np
import tensorflow as tf
from keras import ops

import keras

from keras_hybrid.sam import all_finite


def _labelled_leaves(label, data):
    """`(label, leaf)` pairs, labelled as the user would index them
    (`x['b']`, `x[1]`, `x['a'][0]`)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _labelled_leaves(f"{label}[{key!r}]", value)
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            yield from _labelled_leaves(f"{label}[{index}]", value)
    else:
        yield label, data


def non_finite_report(name, data):
    """`None`, or a sentence locating the non-finite entries of `data`
    (NumPy arrays and eager tensors only; datasets are not scanned)."""
    found = []
    for label, leaf in _labelled_leaves(name, data):
        if isinstance(leaf, (tf.Tensor, tf.Variable)) and not tf.executing_eagerly():
            continue
        if not isinstance(leaf, (np.ndarray, tf.Tensor, tf.Variable)):
            continue
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            found.append(
                f"`{label}` contains {int(bad.sum())} non-finite value(s) (NaN or Inf), "
                f"the first at index {first}: {label}{list(first)}={float(array[first])}."
            )
    return " ".join(found) or None


def _float_values(variables):
    return [v for v in variables if np.issubdtype(np.dtype(str(v.dtype)), np.floating)]


def _state_of(optimizer, variables):
    seen, state = set(), []
    for v in list(variables) + list(optimizer.variables):
        if id(v) not in seen:
            seen.add(id(v))
            state.append(v)
    return state


def _apply_and_keep_if_finite(optimizer, gradients, variables, finite):
    """Applies the gradients; restores weights and optimizer state unless
    `finite` holds and the result is finite. Returns a scalar bool: the
    update was kept.

    The update runs unconditionally and is undone if `finite` is false:
    one `cond` (on the rare restore) instead of a second one around the
    optimizer, whose update then stays in the step's own schedule.
    """
    state = _state_of(optimizer, variables)
    saved = [tf.identity(v.value) for v in state]
    optimizer.apply_gradients(zip(gradients, variables))
    after = [tf.identity(v.value) for v in _float_values(state)]
    kept = ops.logical_and(finite, all_finite(after))

    def restore():
        for v, value in zip(state, saved):
            v.assign(value)
        return ops.convert_to_tensor(False)

    return ops.cond(kept, lambda: ops.convert_to_tensor(True), restore)


def guarded_apply(optimizer, gradients, variables, losses):
    """Applies `gradients` with `optimizer` only if the step keeps the model
    finite (see the module docstring).

    Args:
        optimizer: a built Keras optimizer.
        gradients: list of gradients (or `None`), one per variable.
        variables: the trainable variables.
        losses: scalar losses of the step that must be finite.

    Returns:
        `(applied, scaler_skip)`: scalar bool tensors, the update was
        applied by the policy, and (a `LossScaleOptimizer` only, else
        `None`) the scaler then skipped it itself: its gradients were not
        finite (an overflow in float16, or a NaN it cannot tell from one),
        so it lowered its scale, left the weights, and did not advance
        `optimizer.iterations`.
    """
    if not optimizer.built:
        with tf.init_scope():
            optimizer.build(variables)
    losses_finite = all_finite(losses)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if scaled:
        # It checks the gradients itself (and lowers its scale when they
        # overflow); only the loss and the result are ours to check.
        finite = losses_finite
        iterations_before = tf.identity(optimizer.iterations)
    else:
        # Checked even though a non-finite gradient usually shows in the
        # state after the update: clipping (`clipvalue`) can map NaN to a
        # finite bound.
        finite = ops.logical_and(losses_finite, all_finite(gradients))
    if not tf.distribute.has_strategy():
        applied = _apply_and_keep_if_finite(optimizer, gradients, variables, finite)
    elif scaled:
        # Under a strategy it must be called in replica context: its own
        # skip applies, and the loss check cannot wrap it in a `cond`.
        optimizer.apply_gradients(zip(gradients, variables))
        applied = finite
    else:
        applied = tf.distribute.get_replica_context().merge_call(
            _cross_replica_apply, args=(optimizer, gradients, variables, finite)
        )
    if not scaled:
        return applied, None
    return applied, ops.logical_and(applied, ops.equal(optimizer.iterations, iterations_before))


def _cross_replica_apply(distribution, optimizer, gradients, variables, finite):
    # A `cond` whose branch calls `merge_call` (as `apply_gradients` does
    # under a strategy) must run in cross-replica context, as
    # `keras.optimizers.LossScaleOptimizer` does. Every replica must agree,
    # since the replicas' gradients are all-reduced.
    finite = ops.all(ops.stack(distribution.experimental_local_results(finite)))

    def apply():
        state = _state_of(optimizer, variables)
        saved = [tf.identity(v.value) for v in state]

        def apply_on_replica(gradients, variables):
            optimizer.apply_gradients(zip(gradients, variables))

        distribution.extended.call_for_each_replica(apply_on_replica, args=(gradients, variables))
        after = [
            tf.identity(local)
            for v in _float_values(state)
            for local in distribution.experimental_local_results(v.value)
        ]
        kept = all_finite(after)

        def restore():
            for v, value in zip(state, saved):
                v.assign(value)
            return ops.convert_to_tensor(False)

        return ops.cond(kept, lambda: ops.convert_to_tensor(True), restore)

    return ops.cond(finite, apply, lambda: ops.convert_to_tensor(False))


class StepRecord:
    """What the training steps of one epoch did, as variables written by the
    step and read once per epoch by `NonFiniteGuard`.

    `steps`, `skipped`, `fallbacks` and `scaler_skips` (steps a
    `LossScaleOptimizer` skipped itself) count steps; `first_skip` and
    `first_fallback` are the batch indices (within the epoch) of the first
    skipped step and the first SAM fallback (-1: none); `first_skip_loss` is
    the loss of that skipped step.
    """

    _COUNTS = ("steps", "skipped", "fallbacks", "scaler_skips")
    _INT = _COUNTS + ("first_skip", "first_fallback")

    def __init__(self):
        for name in self._INT:
            setattr(self, name, keras.Variable(
                0 if name in self._COUNTS else -1, dtype="int32",
                trainable=False, aggregation="only_first_replica", name=f"record_{name}",
            ))
        self.first_skip_loss = keras.Variable(
            0.0, dtype="float32", trainable=False, aggregation="only_first_replica",
            name="record_first_skip_loss",
        )

    def reset(self, steps_only=False):
        """Starts a new epoch's record. `steps_only`: only the step counter,
        for an epoch after one without events, whose other fields are still
        at their reset values (one eager assign per epoch instead of six:
        on small data sets an epoch is a few milliseconds)."""
        self.steps.assign(0)
        if steps_only:
            return
        for name in ("skipped", "fallbacks", "scaler_skips"):
            getattr(self, name).assign(0)
        self.first_skip.assign(-1)
        self.first_fallback.assign(-1)
        self.first_skip_loss.assign(0.0)

    def update(self, applied, loss, fallback=None, scaler_skip=None):
        """Records one step (in the traced step function)."""
        batch = self.steps.value
        skipped = ops.logical_not(applied)
        new_skip = ops.logical_and(skipped, ops.less(self.first_skip.value, 0))
        self.first_skip.assign(ops.where(new_skip, batch, self.first_skip.value))
        self.first_skip_loss.assign(
            ops.where(new_skip, ops.cast(loss, "float32"), self.first_skip_loss.value)
        )
        self.skipped.assign_add(ops.cast(skipped, "int32"))
        if fallback is not None:
            new_fallback = ops.logical_and(fallback, ops.less(self.first_fallback.value, 0))
            self.first_fallback.assign(ops.where(new_fallback, batch, self.first_fallback.value))
            self.fallbacks.assign_add(ops.cast(fallback, "int32"))
        if scaler_skip is not None:
            self.scaler_skips.assign_add(ops.cast(scaler_skip, "int32"))
        self.steps.assign_add(1)

    def read(self):
        """Host values of the counts and first events, a dict (once per
        epoch). The first events are read only when the epoch had events;
        otherwise they are at their reset values, -1 and 0.0."""
        values = {"skipped": int(self.skipped.numpy()), "fallbacks": int(self.fallbacks.numpy()),
                  "scaler_skips": int(self.scaler_skips.numpy()), "steps": int(self.steps.numpy()),
                  "first_skip": -1, "first_fallback": -1, "first_skip_loss": 0.0}
        if values["skipped"] or values["fallbacks"]:
            values["first_skip"] = int(self.first_skip.numpy())
            values["first_fallback"] = int(self.first_fallback.numpy())
            values["first_skip_loss"] = float(self.first_skip_loss.numpy())
        return values
