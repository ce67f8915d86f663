"""Slot subsets of the video state (`gather_slots` / `scatter_slots`): a subset written back
unchanged leaves the state as it was; the hot-start duplicate counts of slots left out reach the
subset through its diagonal, and births clear their rows and columns over the whole state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _random_state(tiny_cfg, n, seed):
    from sam3_jax.model.video.step import VideoConfig, VideoState

    state = VideoState.empty(tiny_cfg, VideoConfig(max_objects=n, memory_slots=3))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))

    def fill(x):
        if x.dtype == bool:
            return jax.random.bernoulli(next(keys), 0.5, x.shape)
        if jnp.issubdtype(x.dtype, jnp.integer):
            return jax.random.randint(next(keys), x.shape, 0, 5, x.dtype)
        return jax.random.normal(next(keys), x.shape, x.dtype)

    state = jax.tree.map(fill, state)
    dup = state.hot.dup * (1 - jnp.eye(n, dtype=jnp.int32))  # a track is never its own duplicate
    return state.replace(hot=state.hot._replace(dup=dup))


def test_gather_scatter_round_trip_and_duplicates(tiny_cfg):
    from sam3_jax.model.video.step import gather_slots, scatter_slots

    n = 6
    state = _random_state(tiny_cfg, n, 0)
    slots = jnp.asarray([0, 2, 3], jnp.int32)
    sub = gather_slots(state, slots)
    assert sub.alive.shape == (3,) and sub.memory.features.shape[0] == 3 and sub.hot.dup.shape == (3, 3)
    np.testing.assert_array_equal(sub.memory.features, state.memory.features[np.asarray(slots)])
    dup = np.asarray(state.hot.dup)
    out = [1, 4, 5]
    np.testing.assert_array_equal(np.diag(np.asarray(sub.hot.dup)), dup[out][:, [0, 2, 3]].max(axis=0))
    back = scatter_slots(state, slots, sub, jnp.zeros((3,), bool))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    # a birth in slot 2 (the step has cleared its counts within the subset) clears them against the
    # slots left out too
    stepped = sub.replace(hot=sub.hot._replace(dup=sub.hot.dup.at[1].set(0).at[:, 1].set(0)))
    born = scatter_slots(state, slots, stepped, jnp.asarray([False, True, False]))
    d = np.asarray(born.hot.dup)
    assert not d[2].any() and not d[:, 2].any()
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(d[np.ix_(keep, keep)], dup[np.ix_(keep, keep)])
