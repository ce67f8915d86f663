"""Matchers between the decoder's queries and the padded ground-truth boxes.

Official counterparts (sam3/train/matcher.py), with the settings of the released training configs:

* `hungarian_match` = `BinaryHungarianMatcherV2(focal=True, cost_class=2, cost_bbox=5, cost_giou=2,
  alpha=0.25, gamma=2, stable=False, remove_samples_with_0_gt=True)`: one-to-one.
  Cost of query q for target m, with x the query's logit and p = sigmoid(x):

      C[q, m] = 5 * |box_q - box_m|_1 (cxcywh)  -  2 * GIoU(box_q, box_m)
              + 2 * (-0.25 (1 - p)^2 log p  +  0.75 p^2 log(1 - p))       (logs as log-sigmoid)

  The assignment minimising the total cost is solved exactly, on the device, by
  `sam3_jax.train.lsap` (scipy's `linear_sum_assignment` algorithm replayed in jittable JAX, tie
  rules included), for every cost matrix of the call at once (any leading batch dims, e.g.
  (layers, B)). Each image's matrix is restricted to its valid targets, in slot order, exactly like
  the official code slices its padded matrix to `num_boxes`; an image without valid targets gets no
  match. The official matcher runs scipy on the same matrix (computed in torch, solved in float64),
  so the indices agree unless two assignments tie to within float32 rounding. No host callback:
  the train step stays in JAX's persistent compilation cache and never waits on the host.

* `one_to_many_match` = `BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4)` (DAC): with
  quality S[q, m] = 0.3 p + 0.7 IoU(box_q, box_m), query q matches target m when S[q, m] exceeds
  both the (1 - topk/Q) quantile of S[:, m] over the queries (torch.quantile's linear rule) and
  the threshold. At most `topk` queries pass the quantile test for a target, so the matches fit
  `topk` slots per target. A query may match several targets, as in the official code.

Result format (`Matches`), shared by both matchers and consumed by sam3_jax.train.losses:
`query_idx` (..., M, K) int32 and `valid` (..., M, K) bool: slot k of target m is matched to
query `query_idx[..., m, k]` when `valid[..., m, k]`; K = 1 for the Hungarian matcher, `topk` for
the one-to-many matcher. Invalid slots hold query 0 (never read without the mask).

Everything here is under `stop_gradient` (the official matchers run under `torch.no_grad`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sam3_jax.train.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from sam3_jax.train.lsap import linear_sum_assignment_masked


class Matches(NamedTuple):
    query_idx: jax.Array  # (..., M, K) int32
    valid: jax.Array  # (..., M, K) bool


def hungarian_cost(
    pred_logits: jax.Array,
    pred_boxes: jax.Array,
    tgt_boxes: jax.Array,
    *,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jax.Array:
    """pred_logits (..., Q, 1) or (..., Q), pred_boxes (..., Q, 4) cxcywh, tgt_boxes (..., M, 4)
    cxcywh -> cost (..., Q, M) in float32 (lower is better)."""
    x = pred_logits.astype(jnp.float32)
    if x.ndim == pred_boxes.ndim:
        x = x[..., 0]
    pb = pred_boxes.astype(jnp.float32)
    tb = tgt_boxes.astype(jnp.float32)
    l1 = jnp.sum(jnp.abs(pb[..., :, None, :] - tb[..., None, :, :]), axis=-1)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pb), box_cxcywh_to_xyxy(tb))
    p = jax.nn.sigmoid(x)
    focal = -alpha * (1 - p) ** gamma * jax.nn.log_sigmoid(x) + (1 - alpha) * p**gamma * jax.nn.log_sigmoid(-x)
    return cost_bbox * l1 + cost_class * focal[..., :, None] - cost_giou * giou


def linear_sum_assignment_padded(cost: jax.Array, tgt_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exact minimum-cost one-to-one assignment of the valid targets, batched.

    cost (..., Q, M) float, tgt_valid (..., M) bool -> (query_idx (..., M) int32, matched (..., M)
    bool). Every valid target is matched when Q >= its image's number of valid targets; otherwise
    only Q of them (those scipy picks). Jittable, not differentiable (inputs are gradient-stopped)."""
    return linear_sum_assignment_masked(jax.lax.stop_gradient(cost).astype(jnp.float32), tgt_valid)


def hungarian_match(
    pred_logits: jax.Array,
    pred_boxes: jax.Array,
    tgt_boxes: jax.Array,
    tgt_valid: jax.Array,
    **cost_kw,
) -> Matches:
    """One-to-one matching (official `BinaryHungarianMatcherV2`, focal cost).

    pred_logits (..., Q, 1), pred_boxes (..., Q, 4) cxcywh, tgt_boxes (..., M, 4) cxcywh and
    tgt_valid (..., M) bool; the leading dims of the targets broadcast against the predictions'
    (e.g. predictions (L, B, ...) against targets (B, ...)). Returns `Matches` with K = 1."""
    cost = hungarian_cost(jax.lax.stop_gradient(pred_logits), jax.lax.stop_gradient(pred_boxes), tgt_boxes, **cost_kw)
    idx, matched = linear_sum_assignment_padded(cost, tgt_valid)
    return Matches(idx[..., None], matched[..., None])


def _torch_quantile(x: jax.Array, q: float, axis: int) -> jax.Array:
    """torch.quantile(x, q, dim=axis, keepdim=True) with its default linear interpolation."""
    n = x.shape[axis]
    xs = jnp.sort(x, axis=axis)
    rank = np.float32(q) * np.float32(n - 1)
    lo = int(np.floor(rank))
    hi = min(lo + 1, n - 1)
    w = np.float32(rank - np.float32(lo))
    a = jax.lax.slice_in_dim(xs, lo, lo + 1, axis=axis)
    b = jax.lax.slice_in_dim(xs, hi, hi + 1, axis=axis)
    # torch.lerp: a + w (b - a) for w < 0.5, b - (b - a)(1 - w) otherwise
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (np.float32(1.0) - w)


def one_to_many_match(
    pred_logits: jax.Array,
    pred_boxes: jax.Array,
    tgt_boxes: jax.Array,
    tgt_valid: jax.Array,
    *,
    alpha: float = 0.3,
    threshold: float = 0.4,
    topk: int = 4,
) -> Matches:
    """One-to-many matching (official `BinaryOneToManyMatcher`). Shapes as `hungarian_match`;
    returns `Matches` with K = topk (needs Q > topk, as torch.quantile needs 1 - topk/Q >= 0)."""
    pred_logits = jax.lax.stop_gradient(pred_logits).astype(jnp.float32)
    pred_boxes = jax.lax.stop_gradient(pred_boxes).astype(jnp.float32)
    tgt_boxes = jax.lax.stop_gradient(tgt_boxes).astype(jnp.float32)
    x = pred_logits[..., 0] if pred_logits.ndim == pred_boxes.ndim else pred_logits
    num_queries = x.shape[-1]
    if not 0 < topk < num_queries:
        raise ValueError(f"one-to-many matching needs 0 < topk < num_queries, got {topk} and {num_queries}")
    iou, _ = box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))  # (..., Q, M)
    score = alpha * jax.nn.sigmoid(x)[..., :, None] + (1 - alpha) * iou
    cut = _torch_quantile(score, 1.0 - topk / num_queries, axis=-2)  # (..., 1, M)
    score_t = jnp.swapaxes(score, -1, -2)  # (..., M, Q)
    best, idx = jax.lax.top_k(score_t, topk)  # (..., M, K)
    cut_t = jnp.swapaxes(cut, -1, -2)  # (..., M, 1)
    valid = (best > cut_t) & (best > threshold) & jnp.broadcast_to(tgt_valid, best.shape[:-1])[..., None]
    return Matches(jnp.where(valid, idx, 0).astype(jnp.int32), valid)
