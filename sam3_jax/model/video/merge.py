"""The video model's detection / track bookkeeping as fixed-shape, jittable functions.

SAM 3 on video detects the concept on every frame, propagates the existing tracks with the memory
tracker, and merges the two (reference: the official `Sam3VideoBase`, thresholds of
`build_sam3_video_model`). The official code keeps that state in Python dicts and lists of object
ids; here it lives in arrays over a fixed number of object *slots* (and detection rows), with a
validity mask, so one per-frame step compiles once and its object axis can be sharded:

- `mask_iou`: IoU of binary masks (the official `perflib.masks_ops.mask_iou`).
- `nms_masks`: score threshold + greedy mask NMS (`perflib.nms.nms_masks`).
- `associate`: detections vs tracks (`Sam3VideoBase._associate_det_trk`, many-to-one matching).
- `HotstartState` / `hotstart_step`: the hot-start removal rules (`Sam3VideoBase._process_hotstart`).
- `occlusion_suppression`: of two overlapping tracks, the more recently occluded one is blanked
  before memory encoding (`Sam3VideoBase._suppress_overlapping_based_on_recent_occlusion`).
- `non_overlapping`: each pixel to its highest-scoring object (`_apply_non_overlapping_constraints`).
- `masks_to_boxes`: boxes of the output masks (`perflib.masks_ops.masks_to_boxes`).

Not here yet: the per-frame step that strings these together with the detector and the tracker
(reconditioning, memory encoding, births into free slots, hole filling via layers/components.py), the video
predictor and its parity against the official video model.

Order conventions. The official code walks objects in the order of their ids (new ids are
max id + 1, so that is birth order) and detections in index order; where it breaks ties by that
order (the first of equal scores in NMS, the earliest-born track of a duplicate pair, a
detection's best track), these functions break them by detection index and by `obj_ids`, so a
slot's position never matters.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """Thresholds of the merge, with the defaults of the official video build."""

    score_threshold_detection: float = 0.5  # detections kept above this probability (and NMS'd)
    det_nms_thresh: float = 0.1  # mask IoU above which NMS suppresses a lower-scored detection
    new_det_thresh: float = 0.7  # score a detection needs to start a new track
    assoc_iou_thresh: float = 0.1  # IoU at or above which a detection is matched to a track
    trk_assoc_iou_thresh: float = 0.5  # IoU at or above which a track counts as matched
    high_conf_thresh: float = 0.8  # reconditioning: detection score ...
    high_iou_thresh: float = 0.8  # ... and IoU with its best track
    hotstart_delay: int = 15  # frames after birth during which the removal rules apply
    hotstart_unmatch_thresh: int = 8  # unmatched frames that remove a young track
    hotstart_dup_thresh: int = 8  # duplicate frames that remove the younger of two tracks
    init_trk_keep_alive: int = 30
    max_trk_keep_alive: int = 30
    min_trk_keep_alive: int = -1
    suppress_unmatched_only_within_hotstart: bool = True  # True: keep-alive never hides a track
    decrease_trk_keep_alive_for_empty_masklets: bool = False


_BIG = jnp.iinfo(jnp.int32).max


def _lowest_id(tied: jax.Array, ids: jax.Array) -> jax.Array:
    """Index along axis 0 of `tied` (M, ...) bool of the tied entry with the lowest id (ids (M,)):
    the official code's tie order (objects in id order)."""
    ids = ids.astype(jnp.int32).reshape(ids.shape + (1,) * (tied.ndim - 1))
    return jnp.argmin(jnp.where(tied, ids, _BIG), axis=0)


def mask_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """(N, H, W) bool, (M, H, W) bool -> (N, M) float32 intersection / max(union, 1).

    The pixel counts come from a bf16 x bf16 -> fp32 product of 0 / 1 values: exact (below 2^24
    pixels) on any backend and precision setting."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou needs masks of one size, got {a.shape[1:]} and {b.shape[1:]}")
    fa = a.reshape(a.shape[0], -1).astype(jnp.bfloat16)
    fb = b.reshape(b.shape[0], -1).astype(jnp.bfloat16)
    inter = jax.lax.dot_general(fa, fb, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    area_a = jnp.sum(a.reshape(a.shape[0], -1), axis=1, dtype=jnp.int32).astype(jnp.float32)
    area_b = jnp.sum(b.reshape(b.shape[0], -1), axis=1, dtype=jnp.int32).astype(jnp.float32)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / jnp.maximum(union, 1.0)


def nms_masks(probs: jax.Array, mask_logits: jax.Array, valid: jax.Array, prob_threshold: float,
              iou_threshold: float) -> jax.Array:
    """Score threshold, then greedy NMS on mask IoU -> keep (N,) bool.

    probs (N,), mask_logits (N, H, W) (binarised at > 0), valid (N,) bool (padding rows False).
    A detection is a candidate when valid and prob > prob_threshold; candidates are visited by
    decreasing score (equal scores: the higher index first, as the official reversed argsort of
    a stable sort), and each kept one suppresses every later candidate with IoU > iou_threshold."""
    n = probs.shape[0]
    cand = valid & (probs > prob_threshold)
    binary = mask_logits > 0
    ious = mask_iou(binary, binary)
    # visiting order: candidates first, by score descending, ties by index descending
    key = jnp.where(cand, probs, -jnp.inf)
    order = jnp.lexsort((-jnp.arange(n), -key))  # primary: -key ascending; then -index ascending
    ious_o = ious[order][:, order]
    alive0 = cand[order]

    def visit(k, alive):
        drop = alive[k] & (ious_o[k] > iou_threshold) & (jnp.arange(n) > k)
        return alive & ~drop

    alive = jax.lax.fori_loop(0, n, visit, alive0)
    return jnp.zeros(n, bool).at[order].set(alive)


class Association(NamedTuple):
    """What `associate` finds on one frame (N detection rows, M track slots)."""

    is_new_det: jax.Array  # (N,) bool: starts a new track
    matched: jax.Array  # (N, M) bool: detection d matched to track t (IoU >= assoc_iou_thresh)
    trk_unmatched: jax.Array  # (M,) bool: non-empty track that no detection matches (IoU >= trk thresh)
    trk_empty: jax.Array  # (M,) bool: track whose propagated mask is empty
    recondition_det: jax.Array  # (M,) int32: high-confidence detection to re-prompt track t with, or -1
    ious: jax.Array  # (N, M) float32 (0 on invalid rows / slots)


def associate(det_mask_logits: jax.Array, det_scores: jax.Array, det_valid: jax.Array,
              trk_mask_logits: jax.Array, trk_valid: jax.Array, obj_ids: jax.Array,
              cfg: MergeConfig = MergeConfig()) -> Association:
    """Matches this frame's detections (the kept ones: det_valid) with the propagated tracks.

    det_mask_logits (N, H, W), det_scores (N,), trk_mask_logits (M, H, W) (same H, W), trk_valid
    (M,) (live slots), obj_ids (M,) int (tie order). Rules (official): a track is matched when
    some detection has IoU >= trk_assoc_iou_thresh with it; a detection is new when its score >=
    new_det_thresh and its IoU with every track < assoc_iou_thresh, or, with no live track at all,
    whatever its score; reconditioning pairs: a non-new detection with score >= high_conf_thresh
    whose best track (highest IoU, ties to the lowest obj id) has IoU >= high_iou_thresh; a track
    named by several such detections takes the last one."""
    n, m = det_scores.shape[0], trk_valid.shape[0]
    det_bin, trk_bin = det_mask_logits > 0, trk_mask_logits > 0
    pair = det_valid[:, None] & trk_valid[None, :]
    ious = jnp.where(pair, mask_iou(det_bin, trk_bin), 0.0)
    trk_nonempty = jnp.any(trk_bin.reshape(m, -1), axis=1)
    trk_matched = jnp.any(pair & (ious >= cfg.trk_assoc_iou_thresh), axis=0)
    trk_unmatched = trk_valid & trk_nonempty & ~trk_matched
    trk_empty = trk_valid & ~trk_nonempty
    matched = pair & (ious >= cfg.assoc_iou_thresh)
    any_track = jnp.any(trk_valid)
    is_new = det_valid & jnp.where(any_track, (det_scores >= cfg.new_det_thresh) & ~jnp.any(matched, axis=1), True)

    # best track per detection: highest IoU among live tracks, ties to the lowest obj id
    masked = jnp.where(trk_valid[None, :], ious, -1.0)
    best_iou = jnp.max(masked, axis=1)
    best_trk = _lowest_id((masked == best_iou[:, None]).T, obj_ids)
    high = det_valid & any_track & (det_scores >= cfg.high_conf_thresh) & ~is_new & (best_iou >= cfg.high_iou_thresh)
    names = high[:, None] & (best_trk[:, None] == jnp.arange(m)[None, :])  # (N, M)
    recondition = jnp.max(jnp.where(names, jnp.arange(n)[:, None], -1), axis=0).astype(jnp.int32)
    return Association(is_new, matched, trk_unmatched, trk_empty, recondition, ious)


class HotstartState(NamedTuple):
    """Per-slot counters of the hot-start rules (M slots)."""

    first_frame: jax.Array  # (M,) int32: frame of birth
    unmatched: jax.Array  # (M,) int32: frames on which the track was unmatched (ever)
    ever_unmatched: jax.Array  # (M,) bool
    keep_alive: jax.Array  # (M,) int32
    dup: jax.Array  # (M, M) int32: [a, b] = detections that matched both a and the younger b
    removed: jax.Array  # (M,) bool

    @classmethod
    def empty(cls, m: int) -> "HotstartState":
        z = jnp.zeros((m,), jnp.int32)
        return cls(z, z, jnp.zeros((m,), bool), z, jnp.zeros((m, m), jnp.int32), jnp.zeros((m,), bool))


def hotstart_step(state: HotstartState, frame_idx: jax.Array, reverse: bool, matched: jax.Array,
                  born: jax.Array, trk_unmatched: jax.Array, trk_empty: jax.Array, obj_ids: jax.Array,
                  cfg: MergeConfig = MergeConfig()) -> tuple[HotstartState, jax.Array, jax.Array]:
    """One frame of the hot-start rules -> (new state, newly removed (M,), suppressed (M,)).

    matched (N, M) from `associate` (live tracks only), born (M,) slots of the tracks created on
    this frame, trk_unmatched / trk_empty (M,) from `associate`. Rules (official): a track born
    less than hotstart_delay frames ago (counted in the direction of propagation) is removed once it
    has been unmatched on hotstart_unmatch_thresh frames, or once detections matching both it and an
    earlier-born track (ties: the lower obj id is earlier) have been seen on hotstart_dup_thresh
    occasions (a frame counts once per such detection). Keep-alive counters go up when matched and
    down when unmatched; they hide a track only when suppress_unmatched_only_within_hotstart is
    False. Removed slots stay removed."""
    m = born.shape[0]
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    # a slot taken by a new track starts from zero (official ids are never reused)
    state = state._replace(
        unmatched=jnp.where(born, 0, state.unmatched), ever_unmatched=state.ever_unmatched & ~born,
        dup=jnp.where(born[:, None] | born[None, :], 0, state.dup), removed=state.removed & ~born)
    first = jnp.where(born, frame_idx, state.first_frame)
    keep = jnp.where(born, cfg.init_trk_keep_alive, state.keep_alive)
    trk_matched = jnp.any(matched, axis=0)
    keep = jnp.where(trk_matched, jnp.minimum(cfg.max_trk_keep_alive, keep + 1), keep)
    keep = jnp.where(trk_unmatched, jnp.maximum(cfg.min_trk_keep_alive, keep - 1), keep)
    if cfg.decrease_trk_keep_alive_for_empty_masklets:
        keep = jnp.where(trk_empty, jnp.maximum(cfg.min_trk_keep_alive, keep - 1), keep)
    unmatched = state.unmatched + trk_unmatched.astype(jnp.int32)
    ever = state.ever_unmatched | trk_unmatched

    diff = frame_idx + cfg.hotstart_delay if reverse else frame_idx - cfg.hotstart_delay
    young = (first < diff) if reverse else (first > diff)
    removed = state.removed
    by_unmatch = ever & ~removed & (unmatched >= cfg.hotstart_unmatch_thresh) & young
    suppressed = ever & (keep <= 0) & ~removed & ~by_unmatch
    if cfg.suppress_unmatched_only_within_hotstart:
        suppressed = jnp.zeros_like(suppressed)

    # duplicates: per detection matching >= 2 tracks, the earliest-born (latest when reverse;
    # ties to the lower obj id) against each of the others
    primary = jnp.where(matched, (-first if reverse else first)[None, :], _BIG)  # (N, M)
    tied = matched & (primary == jnp.min(primary, axis=1, keepdims=True))
    head = _lowest_id(tied.T, obj_ids)  # (N,)
    multi = jnp.sum(matched, axis=1) >= 2
    others = matched & multi[:, None] & (jnp.arange(m)[None, :] != head[:, None])  # (N, M)
    heads = jax.nn.one_hot(head, m, dtype=jnp.int32) * multi[:, None]  # (N, M)
    dup = state.dup + heads.T @ others.astype(jnp.int32)  # [a, b] += detections with head a, other b
    by_dup = ~removed & young & jnp.any(dup >= cfg.hotstart_dup_thresh, axis=0)
    newly = by_unmatch | by_dup
    new_state = HotstartState(first, unmatched, ever, keep, dup, removed | newly)
    return new_state, newly, suppressed


def non_overlapping(mask_logits: jax.Array, valid: jax.Array, obj_ids: jax.Array) -> jax.Array:
    """(M, H, W) mask logits of the object slots -> the same with every pixel left to its highest
    scoring object: the others' logits there are clamped to at most -10 (the official
    `_apply_non_overlapping_constraints`; equal logits go to the lowest obj id, the official order).
    Invalid slots neither win pixels nor change; with a single valid object nothing changes."""
    m = mask_logits.shape[0]
    scores = jnp.where(valid[:, None, None], mask_logits, -jnp.inf)
    top = jnp.max(scores, axis=0, keepdims=True)
    tied = valid[:, None, None] & (scores == top)
    winner = _lowest_id(tied, obj_ids)  # (H, W)
    keep = winner[None] == jnp.arange(m)[:, None, None]
    out = jnp.where(keep, mask_logits, jnp.minimum(mask_logits, -10.0))
    alone = jnp.sum(valid) <= 1
    return jnp.where(alone | ~valid[:, None, None], mask_logits, out)


def masks_to_boxes(masks: jax.Array) -> jax.Array:
    """(N, H, W) masks (non-zero = object) -> (N, 4) float32 [x0, y0, x1, y1] pixel indices of the
    outermost object pixels (inclusive; the official `perflib.masks_ops.masks_to_boxes`). An empty
    mask gives [W, H, 0, 0], as there."""
    n, h, w = masks.shape
    on = masks != 0
    cols, rows = jnp.any(on, axis=1), jnp.any(on, axis=2)  # (N, W), (N, H)
    x, y = jnp.arange(w), jnp.arange(h)
    x0 = jnp.min(jnp.where(cols, x, w), axis=1)
    y0 = jnp.min(jnp.where(rows, y, h), axis=1)
    x1 = jnp.max(jnp.where(cols, x, 0), axis=1)
    y1 = jnp.max(jnp.where(rows, y, 0), axis=1)
    return jnp.stack([x0, y0, x1, y1], axis=1).astype(jnp.float32)


NEVER_OCCLUDED = -1
ALWAYS_OCCLUDED = 100_000  # the official mark of a track just removed by the hot-start rules


def occlusion_suppression(mask_logits: jax.Array, valid: jax.Array, last_occluded: jax.Array,
                          frame_idx: jax.Array, reverse: bool, iou_threshold: float = 0.7,
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Before memory encoding, of two tracks whose masks overlap (IoU >= iou_threshold) the one
    occluded more recently (later frame; earlier when reverse) is set to -10, provided the other
    was itself occluded at some point (the official `_suppress_overlapping_based_on_recent_occlusion`).

    mask_logits (M, H, W), valid (M,), last_occluded (M,) int: the frame each track was last
    empty or suppressed (NEVER_OCCLUDED if never; a track without a record that the hot-start rules
    just removed counts as ALWAYS_OCCLUDED). Returns (logits with the suppressed tracks at -10,
    suppressed (M,), updated last_occluded: this frame for every valid track that is empty or
    suppressed now). The rule is symmetric in the pair, so slot order does not matter."""
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    binary = mask_logits > 0
    pair = valid[:, None] & valid[None, :] & ~jnp.eye(valid.shape[0], dtype=bool)
    overlap = pair & (mask_iou(binary, binary) >= iou_threshold)
    li, lj = last_occluded[:, None], last_occluded[None, :]
    later = (li < lj) if reverse else (li > lj)
    suppress = jnp.any(overlap & later & (lj > NEVER_OCCLUDED), axis=1)
    suppress = suppress & (jnp.sum(valid) > 1)
    empty = ~jnp.any(binary.reshape(binary.shape[0], -1), axis=1)
    last = jnp.where(valid & (empty | suppress), frame_idx, last_occluded)
    return jnp.where(suppress[:, None, None], -10.0, mask_logits).astype(mask_logits.dtype), suppress, last
