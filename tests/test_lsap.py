"""The jittable linear sum assignment equals scipy's, ties included (scipy's tie rules replayed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sam3_jax.train.lsap import linear_sum_assignment_masked


def _scipy(cost: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the host matcher did: scipy on cost[:, valid], mapped back to target slots."""
    q, m = cost.shape
    idx, matched = np.zeros(m, np.int32), np.zeros(m, bool)
    cols = np.flatnonzero(valid)
    if cols.size and q:
        rows, picked = linear_sum_assignment(cost[:, cols].astype(np.float64))
        idx[cols[picked]] = rows
        matched[cols[picked]] = True
    return idx, matched


_solve = jax.jit(linear_sum_assignment_masked)


@pytest.mark.parametrize("q,m", [(16, 8), (8, 8), (5, 9), (1, 3), (30, 4), (7, 1)])
@pytest.mark.parametrize("kind", ["float", "ties"])
def test_equals_scipy(q, m, kind):
    rng = np.random.default_rng(q * 100 + m + (kind == "ties"))
    n = 40
    if kind == "float":
        cost = rng.standard_normal((n, q, m)).astype(np.float32) * 3
    else:  # small integers: many equal costs and many optimal assignments; scipy's tie rules decide
        cost = rng.integers(0, 3, (n, q, m)).astype(np.float32)
    valid = rng.random((n, m)) < 0.7
    valid[0] = True
    valid[1] = False
    idx, matched = jax.device_get(_solve(jnp.asarray(cost), jnp.asarray(valid)))
    for b in range(n):
        want_idx, want_matched = _scipy(cost[b], valid[b])
        np.testing.assert_array_equal(matched[b], want_matched, err_msg=f"case {b}")
        np.testing.assert_array_equal(np.where(matched[b], idx[b], 0), want_idx, err_msg=f"case {b}")


def test_leading_dims_broadcast_and_optimality():
    rng = np.random.default_rng(5)
    cost = rng.uniform(0, 10, (3, 4, 20, 6)).astype(np.float32)  # (layers, batch, Q, M)
    valid = rng.random((4, 6)) < 0.6  # per image, shared by the layers
    idx, matched = jax.device_get(_solve(jnp.asarray(cost), jnp.asarray(valid)))
    assert idx.shape == matched.shape == (3, 4, 6)
    for l in range(3):
        for b in range(4):
            want_idx, want_matched = _scipy(cost[l, b], valid[b])
            np.testing.assert_array_equal(matched[l, b], want_matched)
            got = cost[l, b][idx[l, b][matched[l, b]], np.flatnonzero(matched[l, b])].sum()
            best = cost[l, b][want_idx[want_matched], np.flatnonzero(want_matched)].sum()
            assert abs(got - best) <= 1e-5 * max(1.0, abs(best))
            assert len(set(idx[l, b][matched[l, b]].tolist())) == matched[l, b].sum()  # one query per target


def test_non_finite_costs_do_not_break_the_solver():
    cost = np.array([[0.0, np.inf], [np.nan, 1.0], [2.0, 3.0]], np.float32)
    idx, matched = jax.device_get(_solve(jnp.asarray(cost), jnp.ones(2, bool)))
    assert matched.all() and sorted(idx.tolist()) == [0, 1]
