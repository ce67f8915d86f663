"""SA-Co/VEval video cgF1, as the official `VideoCGF1Evaluator` (`sam3/eval/saco_veval_evaluators.py`):

* **video cgF1** (`VideoCGF1Evaluator`): every (video_id, category_id) pair seen in predictions, in
  GT annotations or (when present) in `video_np_pairs` is one datapoint, in sorted order with the
  negative pairs appended. A predicted track is kept when its score >= 0.5; crowd GT masklets are
  dropped. The IoU of a predicted and a GT masklet is spatio-temporal, sum_t |p_t & g_t| /
  sum_t |p_t | g_t| (1 when both are empty on every frame); for boxes it is the same ratio of
  summed box intersections and unions, computed in float32 as the official code does. Then the
  image recipe: one Hungarian matching per pair, TP/FP/FN at IoU 0.50:0.05:0.95, positive micro
  F1, IL_MCC over pairs, cgF1 = pmF1 x IL_MCC.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sam3_jax.eval.cgf1 import IOU_THRESHOLDS, RunSet, accumulate, match_tp, summarize
from sam3_jax.eval.input_checks import EvalInputError
from sam3_jax.eval.video_inputs import VideoGT


def iou_tag(iou_type: str) -> str:
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    return "mask" if iou_type == "segm" else "bbox"


def _masklet_ious(dts: list[list[dict]], gts: list[list[dict]], max_chars: int = 1 << 23) -> list[np.ndarray]:
    """Per datapoint the (nd, ng) spatio-temporal mask IoU matrix; datapoints are processed in
    groups of at most ~`max_chars` characters of RLE (bounded memory)."""
    size = [sum(len(s["counts"]) for tr in dd + gg for s in tr["segmentations"] if s is not None)
            for dd, gg in zip(dts, gts)]
    out: list[np.ndarray] = []
    lo = 0
    while lo < len(dts):
        hi, tot = lo, 0
        while hi < len(dts) and (hi == lo or tot + size[hi] <= max_chars):
            tot += size[hi]
            hi += 1
        out += _masklet_ious_chunk(dts[lo:hi], gts[lo:hi])
        lo = hi
    return out


def _masklet_ious_chunk(dts: list[list[dict]], gts: list[list[dict]]) -> list[np.ndarray]:
    rles: list = []

    def register(track):  # (T,) index of each frame's mask in `rles`, -1 where absent
        idx = np.full(len(track["segmentations"]), -1, dtype=np.int64)
        for t, s in enumerate(track["segmentations"]):
            if s is not None:
                idx[t] = len(rles)
                rles.append(s)
        return idx

    d_idx = [[register(p) for p in block] for block in dts]
    g_idx = [[register(a) for a in block] for block in gts]
    rs = RunSet(rles, "video mask")
    fa, fb, fpair = [], [], []
    npairs = 0
    blocks = []
    for di, gi in zip(d_idx, g_idx):
        nd, ng = len(di), len(gi)
        blocks.append((npairs, nd, ng))
        if nd and ng:  # frame pairs where both masklets have a mask
            D = np.stack(di)[:, None, :]
            G = np.stack(gi)[None, :, :]
            both = (D >= 0) & (G >= 0)
            k, l, t = np.nonzero(both)
            fa.append(np.broadcast_to(D, both.shape)[k, l, t])
            fb.append(np.broadcast_to(G, both.shape)[k, l, t])
            fpair.append(npairs + k * ng + l)
        npairs += nd * ng
    inter = np.zeros(npairs, dtype=np.int64)
    if fa:
        a, b, p = np.concatenate(fa), np.concatenate(fb), np.concatenate(fpair)
        inter = np.rint(np.bincount(p, weights=rs.intersections(a, b), minlength=npairs)).astype(np.int64)

    def total_area(idx):
        return int(rs.area[idx[idx >= 0]].sum())

    out = []
    for (p0, nd, ng), di, gi in zip(blocks, d_idx, g_idx):
        if nd == 0 or ng == 0:
            out.append(np.zeros((nd, ng)))
            continue
        A = np.array([total_area(x) for x in di], dtype=np.int64)[:, None]
        G = np.array([total_area(x) for x in gi], dtype=np.int64)[None, :]
        I = inter[p0:p0 + nd * ng].reshape(nd, ng)
        U = A + G - I
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(U > 0, I / np.where(U > 0, U, 1), 1.0))
    return out


def _boxes_f32(track: dict) -> np.ndarray:
    boxes = [b if b is not None else [0.0, 0.0, 0.0, 0.0] for b in track["bboxes"]]
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def _tracklet_ious(dts: list[dict], gts: list[dict]) -> np.ndarray:
    """Summed box intersection over summed box union (float32, like the official torch code)."""
    d = np.stack([_boxes_f32(p) for p in dts])[:, None]  # (nd, 1, T, 4)
    g = np.stack([_boxes_f32(a) for a in gts])[None]  # (1, ng, T, 4)
    d_tl, d_br = d[..., :2], d[..., :2] + d[..., 2:]
    g_tl, g_br = g[..., :2], g[..., :2] + g[..., 2:]
    a1 = (d_br - d_tl)[..., 0] * (d_br - d_tl)[..., 1]
    a2 = (g_br - g_tl)[..., 0] * (g_br - g_tl)[..., 1]
    wh = np.maximum(np.minimum(d_br, g_br) - np.maximum(d_tl, g_tl), np.float32(0))
    inter = wh[..., 0] * wh[..., 1]
    union = a1 + a2 - inter
    I, U = inter.sum(-1, dtype=np.float32), union.sum(-1, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        # the official code asserts U > 0; a pair of all-empty tracklets counts as identical here
        return np.where(U > 0, I / np.where(U > 0, U, np.float32(1)), np.float32(1)).astype(np.float32)


def video_pairs(gt: VideoGT, preds: Sequence[dict], with_negatives: bool) -> list[tuple[int, int]]:
    pairs = sorted({(p["video_id"], p["category_id"]) for p in preds}
                   | {(a["video_id"], a["category_id"]) for a in gt.anns})
    if with_negatives and gt.np_pairs is not None:
        seen = set(pairs)
        for pr in gt.np_pairs:
            if pr not in seen:
                seen.add(pr)
                pairs.append(pr)
    return pairs


def evaluate_video_cgf1(gt: VideoGT, preds: Sequence[dict], iou_type: str = "segm") -> dict[str, Any]:
    """Video cgF1 & co. of validated predictions. The official dataset-level keys are returned in
    "metrics" (`video_{mask|bbox}_demo_*`); "summary" holds every cgF1 metric of the image scorer."""
    tag = iou_tag(iou_type)
    has_np = gt.np_pairs is not None
    pairs = video_pairs(gt, preds, with_negatives=has_np)
    pos = {pr: k for k, pr in enumerate(pairs)}
    n = len(pairs)
    dts: list[list[dict]] = [[] for _ in range(n)]
    gts: list[list[dict]] = [[] for _ in range(n)]
    for p in preds:
        if float(p["score"]) >= 0.5:
            dts[pos[(p["video_id"], p["category_id"])]].append(p)
    for a in gt.anns:
        if not bool(a.get("iscrowd", 0)):
            gts[pos[(a["video_id"], a["category_id"])]].append(a)
    nd = np.array([len(x) for x in dts], dtype=np.int64)
    ng = np.array([len(x) for x in gts], dtype=np.int64)
    both = np.flatnonzero((nd > 0) & (ng > 0))
    if iou_type == "segm":
        mats = _masklet_ious([dts[b] for b in both], [gts[b] for b in both])
    else:
        for b in both:
            for tr in dts[b] + gts[b]:
                if tr.get("bboxes") is None:
                    raise EvalInputError(f"video {tr['video_id']}: a masklet has no 'bboxes' (needed for box metrics)")
        mats = [_tracklet_ious(dts[b], gts[b]).astype(np.float64) for b in both]
    tp = np.zeros((n, len(IOU_THRESHOLDS)), dtype=np.int64)
    if both.size:
        flat = np.concatenate([m.ravel() for m in mats])
        size = nd[both] * ng[both]
        pstart = np.concatenate([[0], np.cumsum(size)[:-1]])
        tp[both] = match_tp(nd[both], ng[both], flat, pstart)
    acc = accumulate(ng, nd, tp)
    summary = summarize(acc)
    pre = f"video_{tag}_demo"
    metrics = {
        f"{pre}_positive_micro_f1_50_95": summary["positive_micro_F1"],
        f"{pre}_positive_micro_f1_50": summary["positive_micro_F1@0.5"],
        f"{pre}_positive_micro_f1_75": summary["positive_micro_F1@0.75"],
    }
    if has_np:
        with np.errstate(divide="ignore", invalid="ignore"):
            il50 = float(np.float64(summary["cgF1@0.5"]) / np.float64(summary["positive_micro_F1@0.5"]))
            il75 = float(np.float64(summary["cgF1@0.75"]) / np.float64(summary["positive_micro_F1@0.75"]))
        metrics.update({
            f"{pre}_cgf1_micro_50_95": summary["cgF1"],
            f"{pre}_ilmcc_50_95": summary["IL_MCC"],
            f"{pre}_cgf1_micro_50": summary["cgF1@0.5"],
            f"{pre}_ilmcc_50": il50,
            f"{pre}_cgf1_micro_75": summary["cgF1@0.75"],
            f"{pre}_ilmcc_75": il75,
        })
    return {
        "iou_type": iou_type,
        "metrics": metrics,
        "summary": summary,
        "has_video_np_pairs": has_np,
        "curves": {k: np.asarray(acc[k], dtype=np.float64).tolist() for k in ("cgF1", "positive_micro_F1")},
        "iou_thresholds": IOU_THRESHOLDS.tolist(),
        "IL_counts": acc["IL_counts"],
        "num_pairs": n,
        "pairs": {"video_id": [p[0] for p in pairs], "category_id": [p[1] for p in pairs],
                  "num_gt": ng.tolist(), "num_dt": nd.tolist(), "TP": tp.tolist()},
    }
