"""The weighted residuals of a fit and their Jacobian products.

The model plumbing (the trainable constants and network weights of a
model), the data helpers, and `_Residuals`, from which every information
computation of `constant_uncertainty` and `profile_likelihood` takes its
residuals and Jacobian products.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_hybrid._dataset_input import as_sample_arrays
from keras_hybrid._shape_checks import _output_names, outputs_keyed_like
from keras_hybrid.layers import _keyed_constant_variables, is_physical_variable
from keras_hybrid.sam import dense_gradients


def _check_is_model(model):
    if not isinstance(model, keras.Model):
        hint = (" (a `RadiusPath` whose fits all diverged has `best_model=None`)"
                if model is None else "")
        raise TypeError(f"`model` must be a fitted Keras model. Received: model={model!r}{hint}")


def _constant_entries(model):
    """`(key, variable, spec)` of the trainable constants."""
    return [(k, v, s) for k, v, s in _keyed_constant_variables(model) if v.trainable]


def _network_variables(model):
    return [v for v in model.trainable_variables if not is_physical_variable(v)]


def _as_arrays(data, arg):
    if data is None:
        return None
    leaves = tf.nest.flatten(data)
    if not leaves:
        raise ValueError(f"`{arg}` must hold at least one array. Received: {arg}={data!r}")
    return as_sample_arrays(data, arg)


def _graph_forward(model, variables=()):
    """`forward(values, x)`: the model's outputs at `x` (`training=False`)
    with `variables` read as `values`, traced into a graph once. Called
    eagerly, an ODE's solver loop runs op by op: 160 s for five
    trajectories of 10,000 steps, against 3 s in a graph."""
    variables = list(variables)

    def forward(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return model(x, training=False)

    return tf.function(forward, reduce_retracing=True)


def _checked_data(model, x, y):
    """`x` and `y` as arrays, as many samples each, finite, and `y` in the
    shapes of the model's outputs: a target of shape `(N,)` for an output
    `(N, 1)` gets its unit axis, as Keras's losses give it (the residual
    `f(x) - y` would otherwise broadcast to `(N, N)`); other mismatches
    raise."""
    from keras_hybrid.non_finite import non_finite_report

    x, y = _as_arrays(x, "x"), _as_arrays(y, "y")
    if _first_dim(x) != _first_dim(y):
        raise ValueError(
            f"`x` and `y` must have the same number of samples. Received: {_first_dim(x)} and {_first_dim(y)}"
        )
    for name, data in (("x", x), ("y", y)):
        report = non_finite_report(name, data)
        if report is not None:
            raise ValueError(
                f"{report} The residuals must be finite: drop those samples, or give those "
                "values any finite value and weight 0 (`sample_weight` per value; "
                "`kh.common_time_grid` does so for trajectories observed at their own times)."
            )
    first = _graph_forward(model)([], _slice(x, 0, 1))
    _check_targets_match_outputs(model, y, first)
    outputs, targets = tf.nest.flatten(outputs_keyed_like(model, y, first)), tf.nest.flatten(y)
    aligned = []
    for i, (out, target) in enumerate(zip(outputs, targets)):
        want = tuple(out.shape[1:])
        have = np.shape(target)[1:]
        label = "y" if len(targets) == 1 else f"y[{i}]"
        if have == want:
            aligned.append(target)
        elif have + (1,) == want:
            aligned.append(target[..., None])
        elif have == want + (1,):
            aligned.append(target[..., 0])
        else:
            raise ValueError(
                f"`{label}` must have the shape of the model's output per sample, {want}. "
                f"Received: {label} of shape {np.shape(target)}"
            )
    return x, tf.nest.pack_sequence_as(y, aligned)


def _check_targets_match_outputs(model, y, outputs):
    """Raises unless `y` holds a target per output: as many arrays, and for
    a dict the outputs' names (Keras pairs dict targets by name)."""
    names = sorted(outputs) if isinstance(outputs, dict) else _output_names(model)[0]
    count = len(tf.nest.flatten(outputs))
    described = f"{count} output(s)" + (f" {names}" if len(names) == count else "")
    if isinstance(y, dict) and count > 1 and set(y) != set(names):
        raise ValueError(
            f"`y` given as a dict must be keyed by the model's output names: the model has "
            f"{described}. Received: y with keys {sorted(map(str, y))}"
        )
    if len(tf.nest.flatten(y)) != count:
        raise ValueError(
            f"`y` must hold one target array per output of the model, which has {described}. "
            f"Received: y with {len(tf.nest.flatten(y))} array(s) of shapes "
            f"{[tuple(np.shape(a)) for a in tf.nest.flatten(y)]}"
        )


def _first_dim(data):
    return int(np.shape(tf.nest.flatten(data)[0])[0])


def _slice(data, start, stop):
    return tf.nest.map_structure(lambda a: a[start:stop], data)


def _weights_like(sample_weight, y):
    """Per-value weights with the structure and shapes of `y`: one array
    (per sample, or per value) for every output, or a structure like `y`
    of such arrays (a weight per output)."""
    if sample_weight is None:
        return tf.nest.map_structure(lambda a: np.ones(np.shape(a), "float32"), y)
    structured = isinstance(sample_weight, (dict, list, tuple)) and isinstance(y, (dict, list, tuple))
    if structured:
        try:
            tf.nest.assert_same_structure(sample_weight, y)
        except (ValueError, TypeError):
            raise ValueError(
                "`sample_weight` given per output must have the structure of `y`. Received: "
                f"sample_weight={tf.nest.map_structure(np.shape, sample_weight)!r} for "
                f"y={tf.nest.map_structure(np.shape, y)!r}"
            ) from None
    weights = tf.nest.map_structure(lambda a: np.asarray(a, "float32"),
                                    sample_weight if structured else [sample_weight])
    for sw in tf.nest.flatten(weights):
        bad = ~np.isfinite(sw) | (sw < 0)
        if np.any(bad):
            raise ValueError(
                "`sample_weight` must be finite and >= 0. Received: sample_weight with "
                f"{int(bad.sum())} such value(s), the first {float(sw[bad][0])!r}"
            )

    def expand(sw, a):
        w = sw.reshape(sw.shape + (1,) * (np.ndim(a) - sw.ndim))
        try:
            return np.broadcast_to(w, np.shape(a)).astype("float32")
        except ValueError:
            raise ValueError(
                "`sample_weight` must hold one weight per sample (or per value) of `y`. "
                f"Received: sample_weight of shape {sw.shape} for y of shape {np.shape(a)}"
            ) from None

    if structured:
        return tf.nest.map_structure(expand, weights, y)
    return tf.nest.map_structure(lambda a: expand(weights[0], a), y)



def _channel_names(label, values):
    """A label per channel (last axis) of an output's `values`: `label`
    alone for one channel, else `label[j]`."""
    width = values.shape[-1] if values.ndim > 1 else 1
    return [label] if width == 1 else [f"{label}[{j}]" for j in range(width)]


class _Residuals:
    """Weighted residuals `sqrt(w) (f(x) - y)` as a function of parameter
    tensors (fed through a `keras.StatelessScope`), and their Jacobian
    products."""

    def __init__(self, model, variables, x, y, sample_weight, batch_size):
        self.model = model
        self.variables = variables
        self.x, self.y = x, y
        self.w = _weights_like(sample_weight, y)
        self.size = _first_dim(x)
        self.batch_size = self.size if batch_size is None else int(batch_size)
        self.shapes = [tuple(v.shape) for v in variables]
        # Residuals and products in float64 where the model computes in it.
        self.dtypes = [tf.as_dtype(v.dtype) for v in variables]
        self.dtype = tf.float64 if tf.float64 in self.dtypes else tf.float32
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.exactly_reproduced = self._drop_exactly_reproduced()
        self.n = int(sum(np.count_nonzero(w) for w in tf.nest.flatten(self.w)))
        self._ggn = None

    def _drop_exactly_reproduced(self):
        """Gives weight 0 to the values the model reproduces exactly in
        every weighted sample, which are no observations of the noise: an
        ODE's trajectory starts with the initial state given as input (so
        targets that hold it match it bit for bit), and a state the model
        carries unchanged matches everywhere. Counted in `n`, they shrank
        every interval (by sqrt(798 / 838) for 40 trajectories of 21
        points with the first point echoed, and by 0.69 with an unchanged
        second state). A position (an output index, all samples) counts
        as reproduced when its residuals are exactly 0 wherever weighted,
        some other residual is not (an exact fit of everything keeps every
        value), and it does not move with the model's trainable weights
        (a noise-free output that a fitted constant matches is data on
        that constant, not an echo).

        Returns:
            `channel label -> number of values dropped` (see
            `output_noise_std` for the labels), empty if none.
        """
        targets, weights = tf.nest.flatten(self.y), tf.nest.flatten(self.w)
        exact, any_error = [], False
        predictions = self.predictions()
        for p, target, w in zip(predictions, targets, weights):
            p = p.reshape(np.shape(target))
            equal = p == np.asarray(target, p.dtype)
            weighted = w != 0
            any_error = any_error or bool(np.any(weighted & ~equal))
            exact.append(np.all(equal | ~weighted, axis=0) & np.any(weighted, axis=0))
        if not any_error or not any(np.any(e) for e in exact):
            return {}
        moved = self.predictions(self._nudged_weights())
        for i, (p, q, target) in enumerate(zip(predictions, moved, targets)):
            unmoved = np.all(p.reshape(np.shape(target)) == q.reshape(np.shape(target)), axis=0)
            exact[i] = exact[i] & unmoved
        dropped = {}
        for label, w, positions in zip(self._output_labels(), weights, exact):
            mask = np.broadcast_to(positions, w.shape) & (w != 0)
            names = _channel_names(label, w)
            per_channel = mask.reshape(-1, len(names)).sum(0)
            dropped.update({name: int(c) for name, c in zip(names, per_channel) if c})
            w[mask] = 0.0
        return dropped

    def single_chunk(self):
        """Whether the data go through the model in one chunk."""
        return self.batch_size >= self.size

    def chunks(self):
        for start in range(0, self.size, self.batch_size):
            stop = min(start + self.batch_size, self.size)
            yield _slice(self.x, start, stop), _slice(self.y, start, stop), _slice(self.w, start, stop)

    def residual(self, params, x, y, w):
        mapping = list(zip(self.variables, params))
        with keras.StatelessScope(state_mapping=mapping):
            pred = outputs_keyed_like(self.model, y, self.model(x, training=False))
        parts = [
            tf.reshape(tf.sqrt(tf.cast(wi, self.dtype)) * (tf.cast(p, self.dtype) - tf.cast(yi, self.dtype)),
                       [-1])
            for p, yi, wi in zip(tf.nest.flatten(pred), tf.nest.flatten(y), tf.nest.flatten(w))
        ]
        return tf.concat(parts, 0)

    def params(self):
        return [tf.convert_to_tensor(v.value) for v in self.variables]

    def _nudged_weights(self):
        """`(variable, value)` pairs moving every trainable weight of the
        model by a small random relative step (seeded)."""
        rng = np.random.default_rng(0)
        pairs = []
        for v in self.model.trainable_variables:
            value = keras.ops.convert_to_numpy(v.value).astype("float64")
            step = 1e-3 * (np.abs(value) + 1e-3) * rng.standard_normal(value.shape)
            pairs.append((v, tf.constant(value + step, v.dtype)))
        return pairs

    def predictions(self, state_mapping=None):
        """The model's outputs over all samples, at the current parameters
        or with the `(variable, value)` pairs of `state_mapping`: one NumPy
        array per leaf of `y`, in `tf.nest`'s order."""
        if state_mapping is None:
            state_mapping = list(zip(self.variables, self.params()))
        forward = _graph_forward(self.model, [v for v, _ in state_mapping])
        values = [value for _, value in state_mapping]
        parts = [[] for _ in tf.nest.flatten(self.y)]
        for x, _, _ in self.chunks():
            pred = outputs_keyed_like(self.model, self.y, forward(values, x))
            for leaf, p in zip(parts, tf.nest.flatten(pred)):
                leaf.append(np.asarray(p))
        return [np.concatenate(leaf, 0) for leaf in parts]

    def output_noise_std(self):
        """`label -> RMS of the weighted residuals` per output channel (the
        last axis of each output: `"y"`, `"y[1]"`, `"conc"`, `"conc[1]"`,
        `"y[0][1]"`), over the values of nonzero weight."""
        totals = {}  # label -> [sum of squares, count]
        leaves = zip(self._output_labels(), self.predictions(), tf.nest.flatten(self.y),
                     tf.nest.flatten(self.w))
        for label, p, yi, wi in leaves:
            wi = np.asarray(wi, "float64")
            r2 = wi * (np.asarray(p, "float64") - np.asarray(yi, "float64")) ** 2
            names = _channel_names(label, r2)
            r2, wi = r2.reshape(-1, len(names)), wi.reshape(-1, len(names))
            for j, name in enumerate(names):
                entry = totals.setdefault(name, [0.0, 0])
                entry[0] += float(r2[:, j].sum())
                entry[1] += int(np.count_nonzero(wi[:, j]))
        return {k: math.sqrt(ss / count) if count else math.nan for k, (ss, count) in totals.items()}

    def _output_labels(self):
        """A label per output, in `tf.nest`'s order (sorted keys of a dict)."""
        count = len(tf.nest.flatten(self.y))
        if isinstance(self.y, dict) and count == len(self.y):
            return [str(k) for k in sorted(self.y)]
        if count == 1:
            return ["y"]
        return [f"y[{i}]" for i in range(count)]

    def rss(self):
        """The weighted residual sum of squares at the current parameters
        (summed in float64)."""
        return float(sum(
            np.sum(np.asarray(w, "float64")
                   * (p.reshape(np.shape(t)).astype("float64") - np.asarray(t, "float64")) ** 2)
            for p, t, w in zip(self.predictions(), tf.nest.flatten(self.y), tf.nest.flatten(self.w))))

    def _jvp(self, params, tangents, x, y, w):
        """`(r, J v, tape)`. `J v` by the double-VJP trick,
        `J v = d/du [(J^T u) . v]`: reverse mode only, since TensorFlow's
        forward-mode accumulator cannot pass the TensorArrays of the ODE
        loop."""
        # The size in the graph: a last, shorter chunk retraces with unknown shapes.
        size = tf.add_n([tf.size(a) for a in tf.nest.flatten(y)])
        u = tf.zeros(tf.reshape(size, [1]), self.dtype)
        with tf.GradientTape() as outer:
            outer.watch(u)
            with tf.GradientTape(persistent=True) as inner:
                inner.watch(params)
                r = self.residual(params, x, y, w)
            g = dense_gradients(inner.gradient(r, params, output_gradients=u,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO))
            gv = tf.add_n([tf.cast(tf.reduce_sum(gi * ti), self.dtype) for gi, ti in zip(g, tangents)])
        jv = outer.gradient(gv, u, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        self._last_r = r
        return r, jv, inner

    def _compile(self, fn, second=None):
        """`fn(params, second, x, y, w)` as a `tf.function`, XLA-compiled
        when XLA can compile it (tried on the first chunk with `second`,
        by default zero tangents)."""
        try:
            compiled = tf.function(fn, jit_compile=True, reduce_retracing=True)
            params = self.params()
            chunk = next(self.chunks())
            if second is None:
                second = [tf.zeros_like(p) for p in params]
            compiled(params, second(chunk) if callable(second) else second, *chunk)
            return compiled
        except Exception:  # noqa: BLE001 - XLA cannot compile every model
            return tf.function(fn, reduce_retracing=True)

    def _tangents(self, v):
        tangents, start = [], 0
        for shape, size, dtype in zip(self.shapes, self.sizes, self.dtypes):
            tangents.append(tf.constant(np.reshape(v[start:start + size], shape), dtype))
            start += size
        return tangents

    def jacobian_columns(self, indices):
        """Columns `J e_i` (data space, float64) for the flat parameter
        indices `indices`, by Jacobian-vector products (one pass over the
        data per column)."""

        def jvp(params, tangents, x, y, w):
            return self._jvp(params, tangents, x, y, w)[:2]

        if getattr(self, "_jvp_fn", None) is None:
            self._jvp_fn = self._compile(jvp)
        params = self.params()
        p = sum(self.sizes)
        columns = []
        for i in indices:
            e = np.zeros(p)
            e[i] = 1.0
            tangents = self._tangents(e)
            parts = []
            for chunk in self.chunks():
                _, jv = self._jvp_fn(params, tangents, *chunk)
                parts.append(jv.numpy().astype("float64"))
            columns.append(np.concatenate(parts))
        return columns

    def dense_gram(self):
        """`(J^T J, RSS)` from the full Jacobian, built column by column
        with forward-mode products (one pass over the data per parameter)."""
        j = np.stack(self.jacobian_columns(range(sum(self.sizes))), 1)
        return j.T @ j, self.rss()

    def _chunk_size(self, y):
        return sum(int(np.prod(np.shape(a))) for a in tf.nest.flatten(y))

    def data_product(self, u, scales):
        """`J D J^T u` for a data-space vector `u` (float64 in and out),
        `D = diag(scales)` over the parameters (flat, float64). Two passes
        over the chunks: `g = sum_b J_b^T u_b` over all of them first, then
        `J_a (D g)` per chunk (`J D J^T` couples every chunk with every
        other)."""
        if getattr(self, "_vjp_fn", None) is None:
            def vjp(params, vector, x, y, w):
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    r = self.residual(params, x, y, w)
                return dense_gradients(tape.gradient(r, params, output_gradients=vector,
                                            unconnected_gradients=tf.UnconnectedGradients.ZERO))

            def jvp(params, tangents, x, y, w):
                return self._jvp(params, tangents, x, y, w)[1]

            self._vjp_fn = self._compile(
                vjp, lambda chunk: tf.zeros([self._chunk_size(chunk[1])], self.dtype))
            self._data_jvp_fn = self._compile(jvp)
        params = self.params()
        g, start = None, 0
        for chunk in self.chunks():
            size = self._chunk_size(chunk[1])
            part = self._vjp_fn(params, tf.constant(u[start:start + size], self.dtype), *chunk)
            g = list(part) if g is None else [a + b for a, b in zip(g, part)]
            start += size
        tangents = [gi * si for gi, si in zip(g, self._tangents(scales))]
        return np.concatenate([self._data_jvp_fn(params, tangents, *chunk).numpy().astype("float64")
                               for chunk in self.chunks()])

    def _build_ggn(self):
        def ggn(params, tangents, x, y, w):
            _, jv, inner = self._jvp(params, tangents, x, y, w)
            return dense_gradients(inner.gradient(self._last_r, params, output_gradients=tf.stop_gradient(jv),
                                         unconnected_gradients=tf.UnconnectedGradients.ZERO))

        self._ggn = self._compile(ggn)

    def ggn_vector(self, v):
        """`J^T J v` for a flat vector `v` (float64 in and out)."""
        if self._ggn is None:
            self._build_ggn()
        params = self.params()
        tangents = self._tangents(v)
        total = np.zeros(sum(self.sizes))
        for chunk in self.chunks():
            grads = self._ggn(params, tangents, *chunk)
            total += np.concatenate([np.reshape(g.numpy(), -1) for g in grads]).astype("float64")
        return total
