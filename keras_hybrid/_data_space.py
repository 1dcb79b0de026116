"""One compiled product for the data-space solve of `constant_uncertainty`.

The marginal information of the constants,

```
S = J_c^T (I + J_w D^-1 J_w^T)^-1 J_c,   D = alpha sigma^2 (per weight)
```

is solved column by column with conjugate gradients
(`keras_hybrid.uncertainty.conjugate_gradient`) on
`M = I + J_w D^-1 J_w^T`. Every product the solve needs comes from one
compiled function of the whole data set,

```
(v, t_c) -> (r, J_w (D^-1 J_w^T v) + J_c t_c)
```

which runs the model's forward pass once, a reverse pass
(`g = J^T v`), and differentiates that reverse pass in `v` for the
Jacobian-vector product (TensorFlow's forward-mode accumulator cannot
pass the TensorArrays of the ODE loop; measured on the pendulum hybrid,
a forward-mode product through a tensor-carried loop took twice as long
as this). With `v = 0` and `t_c = e_i` it gives the column `J_c e_i` and
the residuals `r`; with `t_c = 0` the CG product. One function means one
trace and one XLA compilation per report, which dominate the cost of a
report with a few dozen products.
"""

import numpy as np
import tensorflow as tf

from keras_hybrid.sam import dense_gradients

_ZERO = tf.UnconnectedGradients.ZERO
#: XLA-compile the product once a solve has made `JIT_AFTER` products with
#: plain graph execution. Measured on the pendulum hybrid (2 shared CPU
#: cores): tracing plus XLA compilation 6.8 s against 2.5 s for the plain
#: graph, and 0.10 s against 0.15 s per product; most reports take 30-70
#: products, where the plain graph is faster overall.
JIT_COMPILE = True
JIT_AFTER = 100


class DataSpaceSolver:
    """Jacobian columns of the constants and the data-space product, for
    the residuals `res` (a `keras_hybrid.diagnostics._Residuals` over the
    `p_c` constants followed by the network weights, data in one chunk).

    The product runs as a plain graph first and is XLA-compiled after
    `JIT_AFTER` products (if XLA compiles the model; `.xla` says whether
    the last product was).
    """

    def __init__(self, res, p_c):
        self.res = res
        self.p_c = int(p_c)
        self.p_w = int(sum(res.sizes[self.p_c:]))
        self.xla = None
        self.calls = 0
        self._fn = None
        self._params = res.params()
        self._chunk = tuple(next(res.chunks()))
        self._size = res._chunk_size(self._chunk[1])
        self._scale = self._split(np.zeros(self.p_w))

    def _product(self, params, v, tangent_c, scale, x, y, w):
        p_c = self.p_c
        with tf.GradientTape() as outer:
            outer.watch(v)
            with tf.GradientTape() as inner:
                inner.watch(params)
                r = self.res.residual(params, x, y, w)
            # (An Embedding's gradient is sparse.)
            g = dense_gradients(inner.gradient(r, params, output_gradients=v, unconnected_gradients=_ZERO))
            # d/dv of g . t with t = (t_c, D^-1 g_w) held fixed: J t.
            dtype = self.res.dtype
            terms = [tf.reduce_sum(gi * tf.cast(ti, gi.dtype))
                     for gi, ti in zip(g[:p_c], tf.unstack(tangent_c))]
            terms += [tf.reduce_sum(gi * tf.stop_gradient(gi * si)) for gi, si in zip(g[p_c:], scale)]
            terms = [tf.cast(t, dtype) for t in terms]
            gt = tf.add_n(terms)
        return r, outer.gradient(gt, v, unconnected_gradients=_ZERO)

    def _split(self, flat):
        out, start = [], 0
        res = self.res
        for shape, size, dtype in zip(res.shapes[self.p_c:], res.sizes[self.p_c:], res.dtypes[self.p_c:]):
            out.append(tf.constant(np.reshape(flat[start:start + size], shape), dtype))
            start += size
        return out

    def _call(self, v, tangent_c):
        args = (self._params, tf.constant(v, self.res.dtype), tf.constant(tangent_c, self.res.dtype),
                self._scale) + self._chunk
        self.calls += 1
        if self._fn is None:
            self._fn = tf.function(self._product, autograph=False)
            self.xla = False
        elif JIT_COMPILE and self.calls == JIT_AFTER:
            # Enough products to repay an XLA compilation (ski rental: the
            # time saved by the faster product after it equals its cost).
            try:
                fn = tf.function(self._product, jit_compile=True, autograph=False)
                r, jt = fn(*args)
                self._fn, self.xla = fn, True
                return r.numpy().astype("float64"), jt.numpy().astype("float64")
            except Exception:  # noqa: BLE001 - XLA cannot compile every model
                pass
        r, jt = self._fn(*args)
        return r.numpy().astype("float64"), jt.numpy().astype("float64")

    def columns(self):
        """`(residuals, J_c)` as float64 arrays, `J_c` of shape `(n, p_c)`."""
        zero = np.zeros(self._size)
        cols, r = [], None
        for i in range(self.p_c):
            r, col = self._call(zero, np.eye(self.p_c)[i])
            cols.append(col)
        return r, np.stack(cols, 1)

    def set_inverse_shift(self, inverse_shift):
        """Sets `D^-1` (per weight, flat)."""
        self._scale = self._split(np.broadcast_to(np.asarray(inverse_shift, "float64"), (self.p_w,)))

    def matvec(self, u):
        """`(I + J_w D^-1 J_w^T) u` for a data-space vector `u`."""
        return u + self._call(u, np.zeros(self.p_c))[1]
