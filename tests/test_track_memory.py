"""Fixed-slot track memory: the in-jit frame choice (`memory_bank_at`) equals the official choice
(`select_memory_frames`, host side) on random histories, forward and reverse; slot writes,
overwrites, eviction and a full store."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.model.tracker.track_memory import EMPTY, TrackMemory, add_memory, memory_bank_at
from sam3_jax.model.tracker.tracker import select_memory_frames

SEL = dict(num_maskmem=7, max_cond_frames_in_attn=4, max_obj_ptrs_in_encoder=16)
SLOTS = 40  # more than any random history below holds (free slots mixed in)


@jax.jit
def _bank(memory, frame_idx, num_frames):
    return memory_bank_at(memory, frame_idx, num_frames=num_frames, **SEL)


@jax.jit
def _bank_reverse(memory, frame_idx, num_frames):
    return memory_bank_at(memory, frame_idx, num_frames=num_frames, reverse=True, **SEL)


def _history(rng, num_frames):
    frames = rng.permutation(num_frames)[: rng.integers(2, num_frames)]
    n_cond = int(rng.integers(1, min(8, len(frames)) + 1))
    cond = [int(f) for f in frames[:n_cond]]  # in insertion order
    non_cond = [int(f) for f in frames[n_cond:]]
    return cond, non_cond


def _memory(cond, non_cond, slots):
    """A store holding the history, conditioning frames inserted in the given order, slots shuffled."""
    m = TrackMemory.empty(1, slots, 1, 2, 4)
    order = cond + non_cond
    rng = np.random.default_rng(len(order))
    pos = rng.permutation(slots)[: len(order)]
    frame = np.full((1, slots), EMPTY, np.int32)
    is_cond = np.zeros((1, slots), bool)
    ins = np.zeros((1, slots), np.int32)
    for i, (f, p) in enumerate(zip(order, pos)):
        frame[0, p], is_cond[0, p], ins[0, p] = f, i < len(cond), i
    return m.replace(frame=jnp.asarray(frame), is_cond=jnp.asarray(is_cond), order=jnp.asarray(ins),
                     next_order=jnp.asarray([len(order)], jnp.int32))


@pytest.mark.parametrize("reverse", [False, True])
def test_choice_equals_official_on_random_histories(reverse):
    rng = np.random.default_rng(7 + reverse)
    for _ in range(150):
        num_frames = int(rng.integers(3, 40))
        cond, non_cond = _history(rng, num_frames)
        frame_idx = int(rng.integers(0, num_frames))
        if frame_idx in cond + non_cond and rng.random() < 0.7:
            continue  # mostly query frames that are not in the memory yet
        memory = _memory(cond, non_cond, SLOTS)  # one shape: one compilation
        spatial, pointers, max_pos = select_memory_frames(frame_idx, cond, non_cond, num_frames=num_frames,
                                                          reverse=reverse, **SEL)
        bank = (_bank_reverse if reverse else _bank)(memory, frame_idx, num_frames)
        frame = np.asarray(memory.frame[0])
        got_spatial = sorted((int(frame[k]), int(bank.tpos[0, k])) for k in np.flatnonzero(bank.valid[0]))
        got_ptrs = sorted((int(frame[k]), int(bank.ptr_tpos[0, k])) for k in np.flatnonzero(bank.ptr_valid[0]))
        case = dict(frame_idx=frame_idx, cond=cond, non_cond=non_cond, num_frames=num_frames, reverse=reverse)
        assert got_spatial == sorted(spatial), case
        assert got_ptrs == sorted(pointers), case
        assert float(bank.ptr_max_pos) == max_pos


def test_add_overwrite_evict_and_full():
    m = TrackMemory.empty(2, 3, 1, 2, 4)
    feat = lambda v: jnp.full((2, 1, 1, 2), float(v))  # noqa: E731
    ptr = lambda v: jnp.full((2, 4), float(v))  # noqa: E731
    m, dropped = add_memory(m, 0, feat(0), ptr(0), True)
    m, _ = add_memory(m, 1, feat(1), ptr(1), False)
    m, _ = add_memory(m, 2, feat(2), ptr(2), False)
    assert np.asarray(m.frame).tolist() == [[0, 1, 2]] * 2 and not np.asarray(dropped).any()
    # the same frame again overwrites its slot
    m, _ = add_memory(m, 2, feat(9), ptr(9), False)
    assert np.asarray(m.frame).tolist() == [[0, 1, 2]] * 2 and float(m.features[0, 2, 0, 0, 0]) == 9.0
    # full: the non-conditioning frame farthest behind (1) goes, the conditioning frame stays
    m, dropped = add_memory(m, 3, feat(3), ptr(3), False)
    assert np.asarray(m.frame).tolist() == [[0, 3, 2]] * 2 and not np.asarray(dropped).any()
    # tracking in reverse, the farthest behind is the largest frame index
    r, _ = add_memory(m, 1, feat(1), ptr(1), False, reverse=True)
    assert np.asarray(r.frame).tolist() == [[0, 1, 2]] * 2  # frame 3 (slot 1) made way for frame 1
    # a store of conditioning frames only cannot take another frame: reported, nothing changes
    c = TrackMemory.empty(1, 2, 1, 2, 4)
    for f in (0, 5):
        c, _ = add_memory(c, f, feat(f)[:1], ptr(f)[:1], True)
    c2, dropped = add_memory(c, 6, feat(6)[:1], ptr(6)[:1], False)
    assert bool(dropped[0]) and np.asarray(c2.frame).tolist() == [[0, 5]]
    # per-object conditioning flags
    m, _ = add_memory(m, 4, feat(4), ptr(4), jnp.array([True, False]))
    assert np.asarray(m.is_cond)[:, 0].all() and np.asarray(m.is_cond)[0].sum() == 2


def test_rewritten_conditioning_frame_keeps_its_insertion_order():
    m = TrackMemory.empty(1, 4, 1, 2, 4)
    one = lambda v: (jnp.full((1, 1, 1, 2), float(v)), jnp.full((1, 4), float(v)))  # noqa: E731
    for f in (10, 2, 18):
        m, _ = add_memory(m, f, *one(f), True)
    order_before = np.asarray(m.order).copy()
    m, _ = add_memory(m, 2, *one(7), True)  # new clicks on conditioning frame 2
    assert np.array_equal(np.asarray(m.order), order_before)
    m, _ = add_memory(m, 5, *one(5), False)
    m, _ = add_memory(m, 5, *one(5), True)  # a tracked frame becomes a conditioning frame: inserted last
    slot = int(np.flatnonzero(np.asarray(m.frame[0]) == 5)[0])
    assert int(m.order[0, slot]) == int(np.asarray(m.order).max())


def _official_filtered_choice(frame_idx, cond, non_cond, scores, num_frames, reverse):
    """The video tracker's choice with memory selection: the official `frame_filter` picks the
    frame list; spatial / pointer entries follow `_prepare_memory_conditioned_features` (its
    memory-selection branches, restated)."""
    import types

    from sam3.model.sam3_tracker_base import Sam3TrackerBase

    fake = types.SimpleNamespace(mf_threshold=0.01, max_obj_ptrs_in_encoder=SEL["max_obj_ptrs_in_encoder"])
    outputs = {"non_cond_frame_outputs": {f: {"eff_iou_score": s} for f, s in zip(non_cond, scores)}}
    valid = Sam3TrackerBase.frame_filter(fake, outputs, reverse, frame_idx, num_frames, 1)
    spatial_sel, _, max_ptrs = select_memory_frames(frame_idx, cond, [], num_frames=num_frames, reverse=reverse, **SEL)
    selected = [f for f, t in spatial_sel if t == 0]
    unselected = [f for f in cond if f not in selected]
    stored = set(non_cond) | set(unselected)
    spatial = [(f, 0) for f in selected]
    for t_pos in range(1, SEL["num_maskmem"]):
        t_rel = SEL["num_maskmem"] - t_pos
        if t_rel <= len(valid) and valid[-t_rel] in stored:
            spatial.append((valid[-t_rel], t_pos))
    sign = -1 if reverse else 1
    pointers = [(f, (frame_idx - f) * sign) for f in selected if (f >= frame_idx if reverse else f <= frame_idx)]
    for t_diff in range(1, max_ptrs):
        if -t_diff <= -len(valid):
            break
        if valid[-t_diff] in stored:
            pointers.append((valid[-t_diff], t_diff))
    return spatial, pointers


@pytest.mark.parametrize("reverse", [False, True])
def test_memory_selection_equals_official_filter(reverse):
    pytest.importorskip("sam3")
    fn = jax.jit(lambda m, f, n: memory_bank_at(m, f, num_frames=n, reverse=reverse, memory_selection=True, **SEL))
    rng = np.random.default_rng(11 + reverse)
    for _ in range(120):
        num_frames = int(rng.integers(3, 40))
        cond, non_cond = _history(rng, num_frames)
        frame_idx = int(rng.integers(0, num_frames))
        # scores around the threshold, some exactly on it
        scores = [float(rng.choice([0.0, 0.01, 0.005, 0.02, 0.5])) for _ in non_cond]
        memory = _memory(cond, non_cond, SLOTS)
        eff = np.zeros((1, SLOTS), np.float32)
        frame = np.asarray(memory.frame[0])
        for f, s in zip(non_cond, scores):
            eff[0, np.flatnonzero(frame == f)[0]] = s
        memory = memory.replace(eff_score=jnp.asarray(eff))
        spatial, pointers = _official_filtered_choice(frame_idx, cond, non_cond, scores, num_frames, reverse)
        bank = fn(memory, frame_idx, num_frames)
        got_spatial = sorted((int(frame[k]), int(bank.tpos[0, k])) for k in np.flatnonzero(bank.valid[0]))
        got_ptrs = sorted((int(frame[k]), int(bank.ptr_tpos[0, k])) for k in np.flatnonzero(bank.ptr_valid[0]))
        case = dict(frame_idx=frame_idx, cond=cond, non_cond=dict(zip(non_cond, scores)), num_frames=num_frames)
        assert got_spatial == sorted(spatial), case
        assert got_ptrs == sorted(pointers), case


def test_eviction_prefers_frames_the_filter_rejects():
    m = TrackMemory.empty(1, 3, 1, 2, 4)
    one = lambda v: (jnp.full((1, 1, 1, 2), float(v)), jnp.full((1, 4), float(v)))  # noqa: E731
    m, _ = add_memory(m, 0, *one(0), True)
    m, _ = add_memory(m, 1, *one(1), False, eff_score=jnp.array([0.5]))
    m, _ = add_memory(m, 2, *one(2), False, eff_score=jnp.array([0.0]))
    m, _ = add_memory(m, 3, *one(3), False, eff_score=jnp.array([0.5]), evict_below=0.01)
    assert sorted(np.asarray(m.frame[0]).tolist()) == [0, 1, 3]  # frame 2 (score 0) went, not frame 1


@pytest.mark.parametrize("selection", [False, True])
def test_compact_bank_keeps_every_valid_slot(selection):
    """`compact_bank` to `spatial_capacity` slots keeps exactly the valid spatial slots (features and
    temporal positions), with and without the selection filter, forward and reverse."""
    from sam3_jax.model.tracker.track_memory import compact_bank, spatial_capacity

    cap = spatial_capacity(SLOTS, num_maskmem=SEL["num_maskmem"], max_cond_frames_in_attn=SEL["max_cond_frames_in_attn"])
    assert cap == 10
    rng = np.random.default_rng(5 + selection)
    fns = {r: jax.jit(lambda m, f, n, r=r: memory_bank_at(m, f, num_frames=n, reverse=r, memory_selection=selection,
                                                         **SEL)) for r in (False, True)}
    for i in range(60):
        reverse = bool(i % 2)
        num_frames = int(rng.integers(3, 40))
        cond, non_cond = _history(rng, num_frames)
        memory = _memory(cond, non_cond, SLOTS)
        memory = memory.replace(features=jnp.asarray(rng.normal(size=memory.features.shape), jnp.float32),
                                eff_score=jnp.asarray(rng.choice([0.0, 0.5], size=(1, SLOTS)), jnp.float32))
        bank = fns[reverse](memory, int(rng.integers(0, num_frames)), num_frames)
        small = compact_bank(bank, cap)
        assert small.features.shape[1] == cap and int(bank.valid.sum()) == int(small.valid.sum()) <= cap
        full = sorted((int(t), float(f)) for t, f, v in zip(bank.tpos[0], bank.features[0, :, 0, 0, 0], bank.valid[0]) if v)
        kept = sorted((int(t), float(f)) for t, f, v in zip(small.tpos[0], small.features[0, :, 0, 0, 0], small.valid[0])
                      if v)
        assert kept == full
