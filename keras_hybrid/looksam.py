"""LookSAM: a full SAM step every `k` steps, a reused direction in between
(Liu et al., "Towards Efficient and Scalable Sharpness-Aware Minimization",
arXiv:2203.02714).

The state, the last "flatness" direction, lives outside Keras's tracking:
it is not a model weight (not saved, not exported) and is rebuilt when
training restarts. A direction is reused only in the every-k block of the
optimizer iteration that stored it, and only after it: a rebuilt direction,
one invalidated because weights were loaded into the model
(`load_weights`, `set_weights`, `BackupAndRestore`), or one stored at a
later iteration than the optimizer's restored count is not, so the first
step after a restart (e.g. a resumed fit) is a full SAM step whatever the
iteration count; the every-k schedule then continues from the optimizer's
restored `iterations`.
"""

import tensorflow as tf
from keras import ops
from keras_hybrid.sam import accumulation_dtype, dense_gradients


class LookSAMState:
    """The stored direction of LookSAM for one list of variables."""

    def __init__(self, variables):
        self.shapes = [tuple(v.shape) for v in variables]
        # float64 when the model's variables are (see `accumulation_dtype`).
        self.dtype = accumulation_dtype(variables)
        self.directions = [
            tf.Variable(tf.zeros(shape, self.dtype), trainable=False, name="sam_direction")
            for shape in self.shapes
        ]
        # The optimizer iteration of the full step that stored the
        # direction; -1: none stored (or invalidated).
        self.stored_at = tf.Variable(tf.constant(-1, "int64"), trainable=False,
                                     name="sam_direction_stored_at")

    def matches(self, variables):
        return [tuple(v.shape) for v in variables] == self.shapes

    def invalidate(self):
        """Forgets the stored direction: the next step is a full SAM step
        (after weights are loaded into the model, the direction belongs to
        other weights)."""
        self.stored_at.assign(-1)

    def reusable_at(self, iterations, every):
        """True if the stored direction may serve the step at optimizer
        iteration `iterations`: stored earlier in the same every-k block."""
        iterations = ops.cast(iterations, "int64")
        stored = ops.convert_to_tensor(self.stored_at)
        return ops.logical_and(
            ops.logical_and(stored >= 0, stored < iterations),
            ops.equal(iterations // every, stored // every),
        )

    def gradients(self, sam, iterations, gradients, full_sam_step):
        """LookSAM's gradient for this step.

        A full SAM step (`full_sam_step()`, which returns the gradients and
        whether it fell back to the plain gradient) when `iterations % sam.every == 0`
        or no direction may be reused (`reusable_at`); it stores `v`, the part of the SAM
        gradient orthogonal to the plain gradient `g`. Otherwise
        `g + alpha |g| / |v| v`.

        Returns:
            The gradients and a scalar bool: the SAM step fell back.
        """
        directions = self.directions
        present = [i for i, g in enumerate(gradients) if g is not None]
        gradients = dense_gradients(gradients)  # an Embedding's are sparse

        def dot(a, b):
            return ops.sum(ops.stack([ops.sum(a[i] * b[i]) for i in present]))

        def full():
            sam_gradients, fallback = full_sam_step()
            sam_gradients = dense_gradients(sam_gradients)
            g = {i: ops.cast(gradients[i], self.dtype) for i in present}
            gs = {i: ops.cast(sam_gradients[i], self.dtype) for i in present}
            coeff = dot(g, gs) / (dot(g, g) + sam.eps)
            for i in present:
                directions[i].assign(gs[i] - coeff * g[i])
            self.stored_at.assign(ops.cast(iterations, "int64"))
            return [sam_gradients[i] for i in present] + [fallback]

        def reuse():
            g = {i: ops.cast(gradients[i], self.dtype) for i in present}
            v = {i: directions[i] for i in present}
            ratio = ops.sqrt(dot(g, g)) / (ops.sqrt(dot(v, v)) + sam.eps)
            reused = [ops.cast(g[i] + sam.alpha * ratio * v[i], gradients[i].dtype) for i in present]
            return reused + [ops.convert_to_tensor(False)]

        is_full_step = ops.logical_or(
            ops.equal(iterations % sam.every, 0),
            ops.logical_not(self.reusable_at(iterations, sam.every)),
        )
        *chosen, fallback = ops.cond(is_full_step, full, reuse)
        out = [None] * len(gradients)
        for i, g in zip(present, chosen):
            out[i] = g
        return out, fallback
