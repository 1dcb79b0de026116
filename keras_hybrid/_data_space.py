"""Compiled data-space conjugate gradients for `constant_uncertainty`.

The marginal information of the constants,

```
S = J_c^T (I + J_w D^-1 J_w^T)^-1 J_c,   D = alpha sigma^2 (per weight)
```

is solved column by column with conjugate gradients (CG) on
`M = I + J_w D^-1 J_w^T`. This module runs the whole iteration in one
compiled TensorFlow function per model:

- the model's forward pass is recorded once per solve and each iteration
  differentiates it again: a reverse pass gives `g = J_w^T u`, and
  differentiating that reverse pass in `u` gives `J_w D^-1 g` (a
  Jacobian-vector product without TensorFlow's forward-mode accumulator,
  which cannot pass the TensorArrays of the ODE loop);
- the iteration stops on the quantity reported: the Gauss (lower) and
  Gauss–Radau (upper) bounds of `S_ii` bracket it (`M`'s smallest
  eigenvalue is at least 1), and CG stops when the bracket is narrower
  than `tol` relative to `S_ii`. The interval from the lower bound is
  then wider than the converged one by a factor of at most
  `sqrt(1 + tol)`.

Reference:
    Golub & Meurant, *Matrices, Moments and Quadrature with Applications*
    (Princeton, 2010), ch. 12; Meurant & Tichy, "Approximating the extreme
    Ritz values and upper bounds for the A-norm of the error in CG",
    Numerical Algorithms 82 (2019).
"""

import numpy as np
import tensorflow as tf

_ZERO = tf.UnconnectedGradients.ZERO


def _split(params, count):
    return list(params[:count]), list(params[count:])


class DataSpaceSolver:
    """Jacobian columns of the constants and the data-space CG solve, for
    the residuals `res` (a `keras_hybrid.diagnostics._Residuals` over the
    constants followed by the network weights) with `p_c` constants.

    The compiled functions take the whole data set in one pass (`res` must
    have a single chunk); XLA is used when it compiles the model, plain
    graph execution otherwise.
    """

    def __init__(self, res, p_c):
        self.res = res
        self.p_c = int(p_c)
        self._columns_fn = None
        self._solve_fn = None
        self.xla = None

    # -- compiled pieces ---------------------------------------------------

    def _columns(self, params, x, y, w):
        """Residuals and the columns `J_c e_i` of the constants."""
        res, p_c = self.res, self.p_c
        size = res._chunk_size(y)
        u = tf.zeros([size], "float32")
        columns = []
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(u)
            with tf.GradientTape() as inner:
                inner.watch(params)
                r = res.residual(params, x, y, w)
            g = inner.gradient(r, params[:p_c], output_gradients=u, unconnected_gradients=_ZERO)
        for i in range(p_c):
            columns.append(outer.gradient(g[i], u, unconnected_gradients=_ZERO))
        return r, tf.stack(columns, 1)

    def _solve(self, params, columns, inverse_shift, tol, max_iter, x, y, w):
        """CG on `(I + J_w D^-1 J_w^T) v = b` for each column `b`, all in
        one graph. Returns the solutions, iterations, lower and upper
        bounds of `b^T v` and the relative residuals."""
        res, p_c = self.res, self.p_c
        _, weights = _split(params, p_c)
        scale = [tf.reshape(s, tf.shape(v)) for s, v in zip(self._split_flat(inverse_shift), weights)]
        with tf.GradientTape(persistent=True) as inner:
            inner.watch(weights)
            r = res.residual(list(params[:p_c]) + weights, x, y, w)

        def matvec(v64):
            v = tf.cast(v64, "float32")
            with tf.GradientTape() as outer:
                outer.watch(v)
                g = inner.gradient(r, weights, output_gradients=v, unconnected_gradients=_ZERO)
                gv = tf.add_n([tf.reduce_sum(gi * tf.stop_gradient(gi * si)) for gi, si in zip(g, scale)])
            jv = outer.gradient(gv, v, unconnected_gradients=_ZERO)
            return v64 + tf.cast(jv, "float64")

        outs = []
        for i in range(p_c):
            outs.append(_cg_loop(matvec, columns[:, i], tol, max_iter))
        return [tf.stack([o[k] for o in outs], -1) for k in range(len(outs[0]))]

    def _split_flat(self, flat):
        sizes = self.res.sizes[self.p_c:]
        return tf.split(flat, sizes) if sizes else []

    def _compiled(self, fn, args):
        """`fn` as a `tf.function`, XLA-compiled when XLA compiles it for
        `args`."""
        if self.xla is not False:
            try:
                compiled = tf.function(fn, jit_compile=True)
                out = compiled(*args)
                self.xla = True
                return compiled, out
            except Exception:  # noqa: BLE001 - XLA cannot compile every model
                self.xla = False
        compiled = tf.function(fn)
        return compiled, compiled(*args)

    # -- public ------------------------------------------------------------

    def columns(self):
        """`(residuals, J_c)` as float64 arrays, `J_c` of shape `(n, p_c)`."""
        chunk = next(self.res.chunks())
        args = (self.res.params(),) + tuple(chunk)
        if self._columns_fn is None:
            self._columns_fn, out = self._compiled(self._columns, args)
        else:
            out = self._columns_fn(*args)
        r, cols = out
        return r.numpy().astype("float64"), cols.numpy().astype("float64")

    def solve(self, columns, inverse_shift, tol, max_iter):
        """Solves for all columns; returns `(solutions (n, p_c), infos)`
        with one info dict per column (`iterations`, `quadratic` = lower
        bound of `S_ii`, `upper` = its upper bound, `residual`,
        `converged`)."""
        chunk = next(self.res.chunks())
        args = (
            self.res.params(),
            tf.constant(columns, "float64"),
            tf.constant(np.asarray(inverse_shift, "float32").ravel()),
            tf.constant(float(tol), "float64"),
            int(max_iter),
        ) + tuple(chunk)
        if self._solve_fn is None:
            self._solve_fn, out = self._compiled(self._solve, args)
        else:
            out = self._solve_fn(*args)
        sol, iters, lower, upper, resid, lows, ups = (t.numpy() for t in out)
        infos = []
        for i in range(self.p_c):
            lo, up = float(lower[i]), float(upper[i])
            infos.append({
                "iterations": int(iters[i]),
                "quadratic": lo,
                "upper": up,
                "residual": float(resid[i]),
                "converged": bool(iters[i] < max_iter or resid[i] <= 1e-10),
                "lower_history": lows[:iters[i], i].tolist(),
                "upper_history": ups[:iters[i], i].tolist(),
            })
        return sol.astype("float64"), infos


def _cg_loop(matvec, b, tol, max_iter, delay=5, eig_lower=1.0):
    """Conjugate gradients on an SPD `M` with `lambda_min(M) >= eig_lower`
    from `x = 0` in a `tf.while_loop` (float64 vectors), for
    `q = b^T M^-1 b`.

    `q_k = b^T x_k = sum_(j<k) gamma_j ||r_j||^2` grows monotonically to
    `q` (Gauss quadrature, a lower bound; the sum is used, which keeps
    the bound in finite precision, Strakos & Tichy, ETNA 13, 2002). The Gauss–Radau rule with the node at `eig_lower` gives an
    upper bound (Meurant & Tichy 2019, with CG's step `gamma_k` and
    `delta_(k+1) = ||r_(k+1)||^2 / ||r_k||^2`):

    ```
    g_0 = 1 / mu,   g_(k+1) = (g_k - gamma_k) / (mu (g_k - gamma_k) + delta_(k+1))
    q_k <= q <= q_k + g_k ||r_k||^2
    ```

    The loop stops when the bracket is narrower than `tol q_k`, or when
    `q_k` grew by at most `tol q_k` over the last `delay` iterations (the
    estimate of `keras_hybrid.uncertainty.conjugate_gradient`), or when
    the relative residual is below 1e-10, or after `max_iter` iterations.

    Returns:
        `(x, iterations, lower, upper, residual, lower_history,
        upper_history)`, the histories padded with their last value to
        `max_iter` entries.
    """
    b = tf.convert_to_tensor(b, "float64")
    mu = tf.constant(eig_lower, "float64")
    rr0 = tf.reduce_sum(b * b)
    ring = tf.zeros([delay + 1], "float64")  # q over the last `delay` iterations

    def cond(k, x, r, p, rr, g, lower, ring, done, lows, ups):
        return tf.logical_and(k < max_iter, tf.logical_not(done))

    def body(k, x, r, p, rr, g, lower, ring, done, lows, ups):
        q = matvec(p)
        pq = tf.reduce_sum(p * q)
        ok = pq > 0
        step = tf.where(ok, rr / tf.where(ok, pq, 1.0), 0.0)
        x = x + step * p
        r = r - step * q
        rr_new = tf.reduce_sum(r * r)
        delta = rr_new / rr
        diff = g - step
        g_new = diff / (mu * diff + delta)
        lower = lower + step * rr
        upper = lower + g_new * rr_new
        ring = tf.concat([ring[1:], [lower]], 0)
        settled = tf.logical_and(k + 1 > delay, ring[-1] - ring[0] <= tol * lower)
        done = tf.logical_not(ok)
        done = tf.logical_or(done, tf.logical_or(settled, upper - lower <= tol * lower))
        done = tf.logical_or(done, rr_new <= 1e-20 * rr0)
        p = r + delta * p
        return (k + 1, x, r, p, rr_new, g_new, lower, ring, done,
                lows.write(k, lower), ups.write(k, upper))

    zero = tf.zeros_like(b)
    lows = tf.TensorArray("float64", size=max_iter)
    ups = tf.TensorArray("float64", size=max_iter)
    k, x, r, _, rr, g, lower, _, _, lows, ups = tf.while_loop(
        cond, body,
        (tf.constant(0, "int32"), zero, b, b, rr0, 1.0 / mu, tf.constant(0.0, "float64"), ring,
         rr0 <= 0, lows, ups),
        maximum_iterations=max_iter,
    )
    upper = lower + g * rr
    pad = tf.range(max_iter) < k
    lows = tf.where(pad, lows.stack(), lower)
    ups = tf.where(pad, ups.stack(), upper)
    return x, k, lower, upper, tf.sqrt(rr / tf.maximum(rr0, 1e-300)), lows, ups
