"""The information of the constants.

The blocks of `J^T J` by the dense path (the full Jacobian), the compiled
path (one traced function, `keras_hybrid._data_space`) or the host path
(separate products per chunk), and the marginal information left to the
constants once the network weights are integrated out (the Schur
complement, or conjugate gradients in data space).
"""

import types

import numpy as np

from keras_hybrid import diagnostics as _pkg
from keras_hybrid import uncertainty as un
from keras_hybrid._data_space import DataSpaceSolver
from keras_hybrid.diagnostics.residuals import _Residuals


def _dense_blocks(res, p_c, p_w):
    """`(gram, rss)`: the full `J^T J` and the residual sum of squares."""
    if _pkg.COMPILED_CG and not p_w and res.single_chunk():
        # No network: the columns and residuals from the one traced product.
        r, jc = DataSpaceSolver(res, p_c).columns()
        return jc.T @ jc, float(r @ r)
    return res.dense_gram()


def _compiled_blocks(res, p_c):
    """`(data_space, jc, r)`: the compiled solver, the constants' Jacobian columns and the residuals."""
    # One compiled pass: the residuals and the constants' Jacobian columns.
    data_space = DataSpaceSolver(res, p_c)
    r, jc = data_space.columns()
    return data_space, jc, r


def _host_blocks(res, p_c, p_w):
    """`(rss, a_cc, a_cw)`: the RSS and the constants' columns of `J^T J`, by products on the host."""
    rss = res.rss()
    cols = []
    for i in range(p_c):
        e = np.zeros(p_c + p_w)
        e[i] = 1.0
        cols.append(res.ggn_vector(e))
    cols = np.stack(cols, 1)
    return rss, cols[:p_c], cols[p_c:].T


def _information_blocks(res, method, p_c, p_w):
    """A namespace of `rss`, `a_cc`, `a_cw`, `a_ww`, `gram`, `data_space`, `jc`,
    `residuals` (`None` where unused)."""
    gram = data_space = jc = a_cw = a_ww = residuals = None
    if method == "dense":
        gram, rss = _dense_blocks(res, p_c, p_w)
        a_cc, a_cw, a_ww = gram[:p_c, :p_c], gram[:p_c, p_c:], gram[p_c:, p_c:]
    elif _pkg.COMPILED_CG and res.single_chunk():
        data_space, jc, residuals = _compiled_blocks(res, p_c)
        rss = float(residuals @ residuals)
        a_cc = jc.T @ jc
    else:
        rss, a_cc, a_cw = _host_blocks(res, p_c, p_w)
    return types.SimpleNamespace(rss=rss, a_cc=a_cc, a_cw=a_cw, a_ww=a_ww, gram=gram,
                                 data_space=data_space, jc=jc, residuals=residuals)


def _data_space_solves(matvec, columns, cg_tol, cg_max_iter):
    """`S = J_c^T M^-1 J_c` by conjugate gradients, one column of `J_c` at
    a time: `(S, per-column CG records, the solutions M^-1 J_c[:, i])`."""
    solves, infos = [], []
    for column in columns:
        # M = I + J_w D^-1 J_w^T has eigenvalues >= 1: a Gauss-Radau bracket.
        sol, info_i = un.conjugate_gradient(matvec, column, tol=cg_tol, max_iter=cg_max_iter,
                                            quadratic="width", eig_lower=1.0)
        solves.append(sol)
        infos.append(info_i)
    info = np.stack(columns, 1).T @ np.stack(solves, 1)
    info = 0.5 * (info + info.T)
    # The diagonal from CG's sum (b^T x can stall with float32 products).
    info[np.diag_indices(len(columns))] = [i["quadratic"] for i in infos]
    return info, infos, solves


def _compiled_data_space_information(data_space, jc, inverse_shift, p_c, cg_tol, cg_max_iter):
    """The data-space solve from the one compiled function: `(S, solver info, solutions)`."""
    data_space.set_inverse_shift(inverse_shift)
    info, infos, solves = _data_space_solves(data_space.matvec, [jc[:, i] for i in range(p_c)],
                                             cg_tol, cg_max_iter)
    return info, {"cg": infos, "compiled": True, "xla": data_space.xla,
                  "calls": data_space.calls}, solves


def _host_data_space_information(res, model, weights, x, y, sample_weight, batch_size,
                                 inverse_shift, p_c, cg_tol, cg_max_iter):
    """The data-space solve with the iteration on the host (one compiled
    product per iteration and chunk): `(S, solver info, solutions)`."""
    net_res = _Residuals(model, weights, x, y, sample_weight, batch_size)

    def matvec(u):
        return u + net_res.data_product(u, inverse_shift)

    info, infos, solves = _data_space_solves(matvec, res.jacobian_columns(range(p_c)), cg_tol,
                                             cg_max_iter)
    return info, {"cg": infos, "compiled": False}, solves


def _marginal_information(res, blocks, shift, method, p_c, p_w, cg_tol, cg_max_iter,
                          model, weights, x, y, sample_weight, batch_size):
    """`(info, solver, solutions)`: the constants' information with the
    network marginalized, the CG record, and CG's solutions
    `(I + J_w D^-1 J_w^T)^-1 J_c[:, i]` (`None` without CG)."""
    if not p_w:
        return blocks.a_cc, {}, None
    if method == "dense":
        return un.schur_information(blocks.a_cc, blocks.a_cw, blocks.a_ww, shift), {}, None
    # In data space, S = J_c^T (I + J_w D^-1 J_w^T)^-1 J_c with
    # D = alpha sigma^2 (per weight): no cancellation of two nearly equal
    # terms when the network can take over most of a constant's
    # information, and conjugate gradients approach S from below (an
    # early stop widens the interval).
    inverse_shift = 1.0 / np.broadcast_to(shift, (p_w,))
    if blocks.data_space is not None:
        return _compiled_data_space_information(blocks.data_space, blocks.jc, inverse_shift, p_c,
                                                cg_tol, cg_max_iter)
    return _host_data_space_information(
        res, model, weights, x, y, sample_weight, batch_size, inverse_shift, p_c,
        cg_tol, cg_max_iter)
