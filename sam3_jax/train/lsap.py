"""Exact linear sum assignment (minimum-cost one-to-one matching) in jittable JAX.

The Hungarian matcher of SAM 3's training loss needs the optimal assignment of each image's valid
targets to its queries. The official code solves it with `scipy.optimize.linear_sum_assignment` on
the host. This is the same algorithm, the shortest-augmenting-path method with dual variables that
scipy implements (Crouse, "On implementing 2D rectangular assignment algorithms", IEEE TAES 2016),
step for step, including the order in which columns are scanned and the rule that breaks ties
between equally short paths (prefer a free column, else the first one found), so that on matrices
whose optimum is not unique it returns the assignment scipy returns. It differs in one respect:
scipy works in float64, this in the cost's dtype (float32 in training), so two assignments whose
totals differ by less than float32 rounding may be ranked the other way.

Why not the host: a `pure_callback` in the train step cannot be stored in JAX's persistent
compilation cache (every start of train.py would compile the step again), holds the step on the
host at every call, and gathers the cost matrices of a sharded batch to one place. Here the solver
is a `lax.while_loop` per matrix, `vmap`-ed over any leading dims; each augmentation touches one
row of the cost, so a (targets x queries) problem costs O(targets^2 x queries).

`linear_sum_assignment_masked(cost, row_valid)` is what the matcher calls: cost (..., Q, M) of Q
queries against M padded targets, `row_valid` (..., M) marking the real targets. The result is the
assignment scipy returns for `cost[:, valid]` (targets in slot order), mapped back to slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _solve_rows(cost: jax.Array, row_active: jax.Array, col_active: jax.Array) -> jax.Array:
    """scipy's `linear_sum_assignment` on the sub-matrix cost[row_active][:, col_active] of a square
    (N, N) matrix, which must have no more active rows than active columns (scipy's layout after
    its transpose). Returns col4row (N,) int32: the column of each active row, -1 for the others."""
    n = cost.shape[0]
    dtype = cost.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    cols = jnp.arange(n, dtype=jnp.int32)
    # scipy's `remaining` starts as the active columns in descending order.
    order = jnp.argsort(jnp.where(col_active, -cols, n + cols)).astype(jnp.int32)
    n_active_cols = jnp.sum(col_active).astype(jnp.int32)

    def augmenting_path(carry, cur):
        u, v, row4col = carry
        init = dict(
            i=cur, min_val=jnp.zeros((), dtype), sink=jnp.int32(-1), remaining=order, num_rem=n_active_cols,
            spc=jnp.full((n,), inf), path=jnp.full((n,), -1, jnp.int32),
            sr=jnp.zeros((n,), bool), sc=jnp.zeros((n,), bool),
        )

        def body(s):
            i, rem = s["i"], s["remaining"]
            sr = s["sr"].at[i].set(True)
            in_rem = cols < s["num_rem"]  # positions of `remaining` still in play, in scan order
            in_play = col_active & ~s["sc"]  # the same columns, by column
            r = s["min_val"] + cost[i] - u[i] - v
            shorter = in_play & (r < s["spc"])
            spc = jnp.where(shorter, r, s["spc"])
            path = jnp.where(shorter, i, s["path"])
            vals = spc[rem]
            lowest = jnp.min(jnp.where(in_rem, vals, inf))
            at_low = in_rem & (vals == lowest)
            free_low = at_low & (row4col[rem] == -1)
            # scipy keeps the first position reaching the minimum unless a later (or the same)
            # position with the minimum leads to a free column: then the last such one.
            first = jnp.argmax(at_low).astype(jnp.int32)
            last_free = (n - 1 - jnp.argmax(free_low[::-1])).astype(jnp.int32)
            index = jnp.where(jnp.any(free_low), last_free, first)
            j = rem[index]
            free = row4col[j] == -1
            last = s["num_rem"] - 1
            return dict(
                i=jnp.where(free, s["i"], row4col[j]), min_val=lowest, sink=jnp.where(free, j, s["sink"]),
                remaining=rem.at[index].set(rem[last]), num_rem=last, spc=spc, path=path, sr=sr,
                sc=s["sc"].at[j].set(True),
            )

        # (The column count bounds the loop: under vmap, `cond` below runs this for inactive rows too,
        # whose result is then discarded; they must end as well.)
        s = jax.lax.while_loop(lambda s: (s["sink"] < 0) & (s["num_rem"] > 0), body, init)
        return s

    def step(carry, cur):
        u, v, col4row, row4col = carry

        def solve(_):
            s = augmenting_path((u, v, row4col), cur)
            min_val, spc, sink = s["min_val"], s["spc"], s["sink"]
            # dual updates (before the augmentation changes col4row)
            others = s["sr"] & (jnp.arange(n) != cur)
            du = jnp.where(others, min_val - spc[jnp.maximum(col4row, 0)], 0.0)
            u2 = (u + du).at[cur].add(min_val)
            v2 = v - jnp.where(s["sc"], min_val - spc, 0.0)

            def walk(w):
                j, c4r, r4c, _ = w
                i = s["path"][j]
                r4c = r4c.at[j].set(i)
                prev = c4r[i]
                c4r = c4r.at[i].set(j)
                return prev, c4r, r4c, (i == cur) | (i < 0)

            _, c4r, r4c, _ = jax.lax.while_loop(lambda w: ~w[3] & (w[0] >= 0), walk,
                                                (sink, col4row, row4col, jnp.bool_(False)))
            return u2, v2, c4r, r4c

        new = jax.lax.cond(row_active[cur], solve, lambda _: (u, v, col4row, row4col), None)
        return new, None

    init = (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype), jnp.full((n,), -1, jnp.int32),
            jnp.full((n,), -1, jnp.int32))
    (_, _, col4row, _), _ = jax.lax.scan(step, init, jnp.arange(n, dtype=jnp.int32))
    return jnp.where(row_active, col4row, -1)


def _assign_one(cost: jax.Array, tgt_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cost (Q, M), tgt_valid (M,) -> (query_idx (M,) int32, matched (M,) bool) for one image."""
    q, m = cost.shape
    n = max(q, m)
    finite = jnp.nan_to_num(cost, nan=jnp.finfo(cost.dtype).max / 4, posinf=jnp.finfo(cost.dtype).max / 4,
                            neginf=-jnp.finfo(cost.dtype).max / 4)
    square = jnp.zeros((n, n), cost.dtype).at[:q, :m].set(finite)  # (queries, targets)
    queries = jnp.arange(n) < q
    targets = jnp.zeros((n,), bool).at[:m].set(tgt_valid)
    # scipy transposes when the matrix has fewer columns (valid targets) than rows (queries).
    transpose = jnp.sum(tgt_valid) < q
    c4r = _solve_rows(jnp.where(transpose, square.T, square), jnp.where(transpose, targets, queries),
                      jnp.where(transpose, queries, targets))
    # rows = targets: c4r[t] is target t's query. rows = queries: c4r[q] is query q's target.
    by_target = c4r[:m]
    rows = jnp.arange(n, dtype=jnp.int32)
    hit = (c4r[None, :] == jnp.arange(m)[:, None]) & (c4r[None, :] >= 0)  # (M, N): query n takes target m
    by_query = jnp.max(jnp.where(hit, rows[None, :], -1), axis=1)
    idx = jnp.where(transpose, by_target, by_query)
    matched = tgt_valid & (idx >= 0)
    return jnp.where(matched, idx, 0).astype(jnp.int32), matched


def linear_sum_assignment_masked(cost: jax.Array, tgt_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Optimal one-to-one assignment of the valid targets, batched and jittable.

    cost (..., Q, M), tgt_valid (..., M) bool (broadcast against cost's leading dims) -> (query_idx
    (..., M) int32, matched (..., M) bool): target m is matched to query query_idx[..., m] when
    matched[..., m]; every valid target is matched when Q >= the image's number of valid targets,
    otherwise Q of them (those scipy picks). Not differentiable (the cost is gradient-stopped)."""
    cost = jax.lax.stop_gradient(cost)
    lead, (q, m) = cost.shape[:-2], cost.shape[-2:]
    tgt_valid = jnp.broadcast_to(tgt_valid, lead + (m,)).astype(bool)
    if q == 0 or m == 0:
        return jnp.zeros(lead + (m,), jnp.int32), jnp.zeros(lead + (m,), bool)
    flat_cost = cost.reshape((-1, q, m))
    flat_valid = tgt_valid.reshape((-1, m))
    idx, matched = jax.vmap(_assign_one)(flat_cost, flat_valid)
    return idx.reshape(lead + (m,)), matched.reshape(lead + (m,))
