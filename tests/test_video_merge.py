"""The video merge rules (sam3_jax.model.video.merge) against the official functions they follow.

Random rectangles as masks, random scores, padding rows / free slots, and object slots in random
positions: the fixed-shape functions must give what the official `perflib` helpers and
`Sam3VideoBase` methods give on the live rows, frame after frame.
"""

from __future__ import annotations

import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.model.video import merge

torch = pytest.importorskip("torch")

H = W = 32


def _rect_logits(rng, n, base=None, jitter=3):
    """(n, H, W) float32 logits (+1 inside a rectangle, -1 outside); around `base` boxes if given."""
    out = -np.ones((n, H, W), np.float32)
    boxes = []
    for i in range(n):
        if base is not None and rng.random() < 0.8:
            x0, y0, x1, y1 = base[rng.integers(len(base))] + rng.integers(-jitter, jitter + 1, 4)
        else:
            x0, y0 = rng.integers(0, W - 4, 2)
            x1, y1 = x0 + rng.integers(3, 16), y0 + rng.integers(3, 16)
        x0, y0, x1, y1 = np.clip([x0, y0, x1, y1], 0, W)
        if x1 <= x0 or y1 <= y0:
            x1, y1 = x0 + 1, y0 + 1
        out[i, y0:y1, x0:x1] = 1.0
        boxes.append(np.array([x0, y0, x1, y1]))
    return out, np.array(boxes).reshape(n, 4)


def test_mask_iou_matches_official():
    from sam3.perflib.masks_ops import mask_iou

    rng = np.random.default_rng(0)
    a, _ = _rect_logits(rng, 7)
    b, _ = _rect_logits(rng, 5)
    b[2] = -1  # an empty mask
    want = mask_iou(torch.from_numpy(a > 0), torch.from_numpy(b > 0)).numpy()
    got = np.asarray(jax.jit(merge.mask_iou)(a > 0, b > 0))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="one size"):
        merge.mask_iou(jnp.zeros((1, 4, 4), bool), jnp.zeros((1, 4, 5), bool))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prob_thresh,iou_thresh", [(0.5, 0.1), (0.0, 0.5)])
def test_nms_matches_official(seed, prob_thresh, iou_thresh):
    from sam3.perflib.nms import nms_masks

    rng = np.random.default_rng(seed)
    n = 14
    _, base = _rect_logits(rng, 4)
    logits, _ = _rect_logits(rng, n, base)
    probs = rng.random(n).astype(np.float32)
    valid = rng.random(n) < 0.8
    want = nms_masks(torch.from_numpy(probs[valid]), torch.from_numpy(logits[valid]), prob_thresh, iou_thresh).numpy()
    fn = jax.jit(merge.nms_masks, static_argnums=(3, 4))
    got = np.asarray(fn(probs, logits, valid, prob_thresh, iou_thresh))
    assert not got[~valid].any()
    np.testing.assert_array_equal(got[valid], want)
    assert want.sum() >= 1


def _official_self(cfg: merge.MergeConfig):
    return types.SimpleNamespace(o2o_matching_masklets_enable=False, **{
        f.name: getattr(cfg, f.name) for f in merge.MergeConfig.__dataclass_fields__.values()})


def _slots(rng, m, live_ids):
    """Random slot positions for the live ids: (slot of each id, obj_ids (M,), valid (M,))."""
    pos = rng.permutation(m)[: len(live_ids)]
    obj_ids = np.full(m, 10_000, np.int32)
    obj_ids[pos] = live_ids
    valid = np.zeros(m, bool)
    valid[pos] = True
    return pos, obj_ids, valid


@pytest.mark.parametrize("seed", range(6))
def test_associate_matches_official(seed):
    from sam3.model.sam3_video_base import Sam3VideoBase

    cfg = merge.MergeConfig()
    rng = np.random.default_rng(seed)
    n_det, m = 9, 8
    n_trk = {0: 0, 1: 5}.get(seed, rng.integers(2, 7))  # seed 0: no live track
    live_ids = np.sort(rng.choice(50, n_trk, replace=False)).astype(np.int32)
    trk, base = _rect_logits(rng, n_trk)
    if n_trk > 2:
        trk[1] = -1  # an empty track
        trk[2] = trk[0]  # a duplicate of track 0 (ties for the best track)
    det, _ = _rect_logits(rng, n_det, base if n_trk else None, jitter=1)
    scores = rng.uniform(0.5, 1.0, n_det).astype(np.float32)
    det_valid = rng.random(n_det) < (0.0 if seed == 1 else 0.85)  # seed 1: no detection

    ref = Sam3VideoBase._associate_det_trk(
        _official_self(cfg), torch.from_numpy(det[det_valid]), scores[det_valid],
        torch.from_numpy(trk), live_ids.astype(np.int64))
    new_inds, unmatched_ids, det_to_trk, recondition, empty_ids = ref

    pos, obj_ids, trk_valid = _slots(rng, m, live_ids)
    trk_slots = np.zeros((m, H, W), np.float32) - 1
    trk_slots[pos] = trk
    got = jax.jit(merge.associate)(det, scores, det_valid, trk_slots, trk_valid, obj_ids)
    rows = np.flatnonzero(det_valid)  # official detection index -> our row
    assert sorted(rows[new_inds].tolist()) == np.flatnonzero(np.asarray(got.is_new_det)).tolist()
    assert sorted(unmatched_ids.tolist()) == sorted(obj_ids[np.asarray(got.trk_unmatched)].tolist())
    assert sorted(empty_ids.tolist()) == sorted(obj_ids[np.asarray(got.trk_empty)].tolist())
    matched = np.asarray(got.matched)
    for d, r in enumerate(rows):
        assert sorted(det_to_trk.get(d, np.array([], np.int64)).tolist()) == sorted(obj_ids[matched[r]].tolist())
    assert not matched[~det_valid].any()
    rec = np.asarray(got.recondition_det)
    want_rec = {int(t): int(rows[d]) for t, d in recondition.items()}
    assert {int(obj_ids[s]): int(rec[s]) for s in np.flatnonzero(rec >= 0)} == want_rec


@pytest.mark.parametrize("reverse", [False, True])
def test_hotstart_matches_official_over_a_clip(reverse):
    """40 frames of random association outcomes, births into random free slots and removals: the
    same removals on every frame and the same keep-alive counters as the official rules."""
    from sam3.model.sam3_video_base import Sam3VideoBase

    cfg = merge.MergeConfig(hotstart_delay=6, hotstart_unmatch_thresh=3, hotstart_dup_thresh=2,
                            init_trk_keep_alive=2, max_trk_keep_alive=4, min_trk_keep_alive=-2)
    off_self = _official_self(cfg)
    meta = {"obj_first_frame_idx": {}, "unmatched_frame_inds": defaultdict(list),
            "trk_keep_alive": defaultdict(int), "overlap_pair_to_frame_inds": defaultdict(list),
            "removed_obj_ids": set(), "suppressed_obj_ids": defaultdict(set)}
    m, n_det = 10, 4
    rng = np.random.default_rng(1 + reverse)
    state = merge.HotstartState.empty(m)
    step = jax.jit(merge.hotstart_step, static_argnums=(2, 8))
    slot_of: dict[int, int] = {}
    next_id = 0
    removed_total = 0
    frames = range(40) if not reverse else range(39, -1, -1)
    for f in frames:
        live = sorted(slot_of)
        # births: up to 2 new objects in random free slots
        free = [s for s in range(m) if s not in slot_of.values()]
        born_ids = []
        for _ in range(min(len(free), rng.integers(0, 3))):
            s = free.pop(rng.integers(len(free)))
            slot_of[next_id] = s
            born_ids.append(next_id)
            next_id += 1
        # association outcomes among the tracks that existed before this frame
        matched = np.zeros((n_det, m), bool)
        for d in range(n_det):
            for oid in live:
                if rng.random() < 0.3:
                    matched[d, slot_of[oid]] = True
        any_match = matched.any(0)
        unmatched = np.zeros(m, bool)
        empty = np.zeros(m, bool)
        for oid in live:
            s = slot_of[oid]
            if not any_match[s]:
                r = rng.random()
                unmatched[s], empty[s] = r < 0.6, 0.6 <= r < 0.8
        obj_ids = np.full(m, 10_000, np.int32)
        for oid, s in slot_of.items():
            obj_ids[s] = oid
        born = np.zeros(m, bool)
        born[[slot_of[o] for o in born_ids]] = True

        det_to = {d: np.array(sorted(int(obj_ids[s]) for s in np.flatnonzero(matched[d])), np.int64)
                  for d in range(n_det)}
        want, meta = Sam3VideoBase._process_hotstart(
            off_self, f, 40, reverse, det_to, np.array(born_ids, np.int64),
            np.array(sorted(obj_ids[empty].tolist()), np.int64), np.array(sorted(obj_ids[unmatched].tolist()), np.int64),
            meta, {})
        state, newly, _ = step(state, f, reverse, matched, born, unmatched, empty, obj_ids, cfg)
        got = {int(obj_ids[s]) for s in np.flatnonzero(np.asarray(newly))}
        assert got == set(want), f"frame {f}"
        keep = np.asarray(state.keep_alive)
        for oid, s in slot_of.items():
            assert keep[s] == meta["trk_keep_alive"][oid], (f, oid)
        for oid in want:  # removed tracks leave the tracker; their slot is free again
            del slot_of[oid]
        removed_total += len(want)
    assert removed_total >= 3  # the clip exercises the rules
    assert any(len(v) >= cfg.hotstart_dup_thresh for v in meta["overlap_pair_to_frame_inds"].values())
    assert any(len(v) >= cfg.hotstart_unmatch_thresh for v in meta["unmatched_frame_inds"].values())


@pytest.mark.parametrize("seed", range(3))
def test_non_overlapping_and_boxes_match_official(seed):
    from sam3.model.sam3_tracker_base import Sam3TrackerBase
    from sam3.perflib.masks_ops import masks_to_boxes

    rng = np.random.default_rng(seed)
    live_ids = np.array([3, 7, 8, 12, 20], np.int32)
    logits = rng.normal(0, 4, (len(live_ids), H, W)).astype(np.float32)
    logits[1, :8] = logits[3, :8] = 10.0  # exact ties (masks given as +-10): the lower id wins
    logits[2, 20:] = -12.0
    want = Sam3TrackerBase._apply_non_overlapping_constraints(None, torch.from_numpy(logits[:, None]))[:, 0].numpy()
    pos, obj_ids, valid = _slots(rng, 8, live_ids)
    slots = rng.normal(0, 4, (8, H, W)).astype(np.float32)  # free slots hold garbage
    slots[pos] = logits
    got = np.asarray(jax.jit(merge.non_overlapping)(slots, valid, obj_ids))
    np.testing.assert_array_equal(got[pos], want)
    np.testing.assert_array_equal(got[~valid], slots[~valid])  # free slots untouched
    one = np.zeros(8, bool)
    one[pos[0]] = True
    np.testing.assert_array_equal(np.asarray(merge.non_overlapping(slots, one, obj_ids)), slots)

    binary = want > 0
    binary[0] = False  # an empty mask
    np.testing.assert_array_equal(np.asarray(merge.masks_to_boxes(binary)),
                                  masks_to_boxes(torch.from_numpy(binary), list(range(len(binary)))).numpy())


@pytest.mark.parametrize("reverse", [False, True])
def test_occlusion_suppression_matches_official(reverse):
    from sam3.model.sam3_video_base import Sam3VideoBase

    off_self = types.SimpleNamespace(suppress_overlapping_based_on_recent_occlusion_threshold=0.7, rank=1)
    off_self._get_objects_to_suppress_based_on_most_recently_occluded = types.MethodType(
        Sam3VideoBase._get_objects_to_suppress_based_on_most_recently_occluded, off_self)
    rng = np.random.default_rng(5 + reverse)
    suppressed_total = 0
    for trial in range(10):
        live_ids = np.sort(rng.choice(40, 6, replace=False)).astype(np.int32)
        logits, base = _rect_logits(rng, 3)
        more, _ = _rect_logits(rng, 3, base, jitter=1)  # near-copies: high IoU pairs
        logits = np.concatenate([logits, more])
        logits[rng.integers(6)] = -1  # an occluded (empty) track
        # previous records: some never occluded, some at earlier frames, one without a record that
        # the hot-start rules just removed
        record = {int(o): int(rng.choice([-1, 3, 5, 9])) for o in live_ids[:5]}
        removed = {int(live_ids[5])} if trial % 2 else set()
        meta_prev = {"obj_ids_all_gpu": live_ids.astype(np.int64),
                     "obj_id_to_last_occluded": {o: torch.tensor([v]) for o, v in record.items()}}
        meta_new = {}
        frame = 12 if not reverse else 1
        want = Sam3VideoBase._suppress_overlapping_based_on_recent_occlusion(
            off_self, frame, torch.from_numpy(logits.copy()), meta_prev, meta_new, removed, reverse).numpy()

        pos, obj_ids, valid = _slots(rng, 9, live_ids)
        slots = np.zeros((9, H, W), np.float32) + 3.0
        slots[pos] = logits
        last = np.full(9, merge.NEVER_OCCLUDED, np.int32)
        for o, s in zip(live_ids, pos):
            last[s] = record.get(int(o), merge.ALWAYS_OCCLUDED if int(o) in removed else merge.NEVER_OCCLUDED)
        out, sup, new_last = jax.jit(merge.occlusion_suppression, static_argnums=(4,))(slots, valid, last, frame, reverse)
        np.testing.assert_array_equal(np.asarray(out)[pos], want)
        np.testing.assert_array_equal(np.asarray(out)[~valid], slots[~valid])
        got_last = {int(o): int(np.asarray(new_last)[s]) for o, s in zip(live_ids, pos)}
        assert got_last == {int(o): int(v[0]) for o, v in meta_new["obj_id_to_last_occluded"].items()}
        suppressed_total += int(np.asarray(sup).sum())
    assert suppressed_total >= 2
