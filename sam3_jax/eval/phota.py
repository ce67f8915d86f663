"""SA-Co/VEval phrase HOTA (pHOTA), as the official `VideoPhraseHotaEvaluator` with the vendored
TrackEval HOTA (`sam3/eval/saco_veval_evaluators.py`):

* **pHOTA** (`VideoPhraseHotaEvaluator` + the vendored TrackEval HOTA): tracks with score > 0.5
  (strict) are kept and their frames with area 0 or an empty/null box are dropped; every
  (video, phrase) pair with GT or kept predictions is one single-class sequence; crowd GT counts as
  ordinary GT. Per sequence HOTA at alpha = 0.05..0.95 (global alignment from soft IoU counts,
  per-frame Hungarian on alignment x similarity), sequences combined by summing TP/FN/FP and
  TP-weighting AssA/AssRe/AssPr/LocA, each field averaged over alpha.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sam3_jax.eval.cgf1 import RunSet, mask_iou_pairs
from sam3_jax.eval.input_checks import EvalInputError
from sam3_jax.eval.video_cgf1 import iou_tag, video_pairs
from sam3_jax.eval.video_inputs import VideoGT

HOTA_ALPHAS = np.arange(0.05, 0.99, 0.05)
_EPS = np.finfo("float").eps
HOTA_FIELDS = ["HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA"]


def hota_sequence(gt_ids: list[np.ndarray], tr_ids: list[np.ndarray], sims: list[np.ndarray],
                  num_gt_ids: int, num_tr_ids: int) -> dict[str, np.ndarray]:
    """TrackEval's HOTA for one sequence: per-frame id arrays (contiguous 0..n-1) and (ngt, ntr)
    similarity matrices. Returns per-alpha arrays (HOTA_TP/FN/FP, AssA, ..., LocA)."""
    from scipy.optimize import linear_sum_assignment

    na = len(HOTA_ALPHAS)
    res = {f: np.zeros(na, dtype=float) for f in HOTA_FIELDS + ["HOTA_TP", "HOTA_FN", "HOTA_FP"]}
    n_gt = sum(len(g) for g in gt_ids)
    n_tr = sum(len(t) for t in tr_ids)
    if n_tr == 0 or n_gt == 0:
        res["HOTA_FN" if n_tr == 0 else "HOTA_FP"] = (n_gt if n_tr == 0 else n_tr) * np.ones(na, dtype=float)
        res["LocA"] = np.ones(na, dtype=float)
        return res
    potential = np.zeros((num_gt_ids, num_tr_ids))
    gt_count = np.zeros((num_gt_ids, 1))
    tr_count = np.zeros((1, num_tr_ids))
    for g, t, sim in zip(gt_ids, tr_ids, sims):
        denom = sim.sum(0)[np.newaxis, :] + sim.sum(1)[:, np.newaxis] - sim
        sim_iou = np.zeros_like(sim)
        m = denom > 0 + _EPS
        sim_iou[m] = sim[m] / denom[m]
        potential[g[:, np.newaxis], t[np.newaxis, :]] += sim_iou
        gt_count[g] += 1
        tr_count[0, t] += 1
    align = potential / (gt_count + tr_count - potential)
    matches = np.zeros((na, num_gt_ids, num_tr_ids))
    thr = HOTA_ALPHAS - _EPS
    for g, t, sim in zip(gt_ids, tr_ids, sims):
        if len(g) == 0:
            res["HOTA_FP"] += len(t)
            continue
        if len(t) == 0:
            res["HOTA_FN"] += len(g)
            continue
        score = align[g[:, np.newaxis], t[np.newaxis, :]] * sim
        rows, cols = linear_sum_assignment(-score)
        s = sim[rows, cols]
        ok = s[np.newaxis, :] >= thr[:, np.newaxis]  # (alphas, matches)
        k = ok.sum(1)
        res["HOTA_TP"] += k
        res["HOTA_FN"] += len(g) - k
        res["HOTA_FP"] += len(t) - k
        res["LocA"] += np.where(ok, s[np.newaxis, :], s.dtype.type(0)).sum(1)
        a_idx, m_idx = np.nonzero(ok)
        matches[a_idx, g[rows[m_idx]], t[cols[m_idx]]] += 1
    denom_a = np.maximum(1, gt_count + tr_count - matches)
    tp1 = np.maximum(1, res["HOTA_TP"])
    res["AssA"] = np.sum(matches * (matches / denom_a), axis=(1, 2)) / tp1
    res["AssRe"] = np.sum(matches * (matches / np.maximum(1, gt_count)), axis=(1, 2)) / tp1
    res["AssPr"] = np.sum(matches * (matches / np.maximum(1, tr_count)), axis=(1, 2)) / tp1
    res["LocA"] = np.maximum(1e-10, res["LocA"]) / np.maximum(1e-10, res["HOTA_TP"])
    return _final_fields(res)


def _final_fields(res: dict) -> dict:
    tp, fn, fp = res["HOTA_TP"], res["HOTA_FN"], res["HOTA_FP"]
    res["DetRe"] = tp / np.maximum(1, tp + fn)
    res["DetPr"] = tp / np.maximum(1, tp + fp)
    res["DetA"] = tp / np.maximum(1, tp + fn + fp)
    res["HOTA"] = np.sqrt(res["DetA"] * res["AssA"])
    res["OWTA"] = np.sqrt(res["DetRe"] * res["AssA"])
    return res


def combine_sequences(all_res: list[dict]) -> dict:
    """TrackEval's sequence combination: sum the counts, TP-weight AssA/AssRe/AssPr and LocA."""
    res = {}
    for f in ("HOTA_TP", "HOTA_FN", "HOTA_FP"):
        res[f] = sum(r[f] for r in all_res)
    for f in ("AssRe", "AssPr", "AssA"):
        res[f] = sum(r[f] * r["HOTA_TP"] for r in all_res) / np.maximum(1.0, res["HOTA_TP"])
    loca = sum(r["LocA"] * r["HOTA_TP"] for r in all_res)
    res["LocA"] = np.maximum(1e-10, loca) / np.maximum(1e-10, res["HOTA_TP"])
    return _final_fields(res)


def _drop_empty_frames(p: dict, where: str) -> dict:
    """pHOTA's per-frame filter: a frame with area 0 or a null / all-zero box is no detection."""
    segs, boxes, areas = list(p["segmentations"]), list(p["bboxes"]), list(p["areas"])
    for t in range(len(boxes)):
        b = boxes[t]
        if areas[t] == 0 or b is None or all(x == 0 for x in b):
            segs[t] = boxes[t] = areas[t] = None
        if not ((areas[t] is None) == (boxes[t] is None) == (segs[t] is None)):
            raise EvalInputError(f"{where} frame {t}: mask, box and area must be null together")
    return dict(p, segmentations=segs, bboxes=boxes, areas=areas)


def evaluate_phota(gt: VideoGT, preds: Sequence[dict], iou_type: str = "segm",
                   threshold: float = 0.5) -> dict[str, Any]:
    """Phrase HOTA of validated predictions. "metrics" holds the official keys
    `video_{mask|bbox}_all_phrase_{HOTA,DetA,AssA,DetRe,DetPr,AssRe,AssPr,LocA,OWTA}`."""
    tag = iou_tag(iou_type)
    key = "segmentations" if iou_type == "segm" else "bboxes"
    kept = [_drop_empty_frames(p, f"prediction {i} (video_id {p['video_id']})")
            for i, p in enumerate(preds) if float(p["score"]) > threshold]
    pairs = video_pairs(gt, kept, with_negatives=False)
    pos = {pr: k for k, pr in enumerate(pairs)}
    g_tracks: list[list[dict]] = [[] for _ in pairs]
    t_tracks: list[list[dict]] = [[] for _ in pairs]
    for a in gt.anns:
        g_tracks[pos[(a["video_id"], a["category_id"])]].append(a)
    for p in kept:
        t_tracks[pos[(p["video_id"], p["category_id"])]].append(p)
    if iou_type == "bbox":
        for a in gt.anns:
            if a.get("bboxes") is None:
                raise EvalInputError(f"{gt.path}: annotation id {a['id']} has no 'bboxes' (needed for box metrics)")
    per_seq = []
    for (vid, cat), gtr, ttr in zip(pairs, g_tracks, t_tracks):
        T = gt.num_frames(vid)
        gp = np.array([[tr[key][t] is not None for t in range(T)] for tr in gtr], dtype=bool).reshape(len(gtr), T)
        tpres = np.array([[tr[key][t] is not None for t in range(T)] for tr in ttr], dtype=bool).reshape(len(ttr), T)
        g_has = np.flatnonzero(gp.any(1))
        gt_rank = np.full(len(gtr), -1, dtype=np.int64)
        if g_has.size:
            ids = np.array([gtr[i]["id"] for i in g_has])
            uniq = np.unique(ids)
            gt_rank[g_has] = np.searchsorted(uniq, ids)
        t_has = np.flatnonzero(tpres.any(1))
        tr_rank = np.full(len(ttr), -1, dtype=np.int64)
        tr_rank[t_has] = np.arange(t_has.size)
        gt_ids = [gt_rank[np.flatnonzero(gp[:, t])] for t in range(T)]
        tr_ids = [tr_rank[np.flatnonzero(tpres[:, t])] for t in range(T)]
        sims = _frame_similarities(gtr, ttr, gp, tpres, key, iou_type)
        per_seq.append(hota_sequence(gt_ids, tr_ids, sims, int(len(np.unique(gt_rank[g_has]))), int(t_has.size)))
    comb = combine_sequences(per_seq) if per_seq else _final_fields(
        {f: np.zeros(len(HOTA_ALPHAS)) for f in ("HOTA_TP", "HOTA_FN", "HOTA_FP", "AssA", "AssRe", "AssPr", "LocA")})
    metrics = {f"video_{tag}_all_phrase_{f}": float(np.mean(comb[f])) for f in HOTA_FIELDS}
    return {
        "iou_type": iou_type,
        "metrics": metrics,
        "alphas": HOTA_ALPHAS.tolist(),
        "curves": {f: np.asarray(comb[f], dtype=np.float64).tolist() for f in HOTA_FIELDS},
        "num_sequences": len(pairs),
        "sequences": [{"video_id": v, "category_id": c, **{f: float(np.mean(r[f])) for f in HOTA_FIELDS}}
                      for (v, c), r in zip(pairs, per_seq)],
    }


def _frame_similarities(gtr, ttr, gp, tpres, key, iou_type) -> list[np.ndarray]:
    T = gp.shape[1]
    if iou_type == "bbox":
        out = []
        for t in range(T):
            g = np.array([gtr[i][key][t] for i in np.flatnonzero(gp[:, t])], dtype=np.float32).reshape(-1, 4)
            d = np.array([ttr[i][key][t] for i in np.flatnonzero(tpres[:, t])], dtype=np.float32).reshape(-1, 4)
            out.append(_box_ious_trackeval(g, d))
        return out
    rles, gi, ti = [], [], []
    for t in range(T):
        gi.append(np.arange(len(rles), len(rles) + gp[:, t].sum()))
        rles.extend(gtr[i][key][t] for i in np.flatnonzero(gp[:, t]))
        ti.append(np.arange(len(rles), len(rles) + tpres[:, t].sum()))
        rles.extend(ttr[i][key][t] for i in np.flatnonzero(tpres[:, t]))
    rs = RunSet(rles, "video mask")
    a = np.concatenate([np.repeat(g, len(d)) for g, d in zip(gi, ti)]).astype(np.int64)
    b = np.concatenate([np.tile(d, len(g)) for g, d in zip(gi, ti)]).astype(np.int64)
    flat = mask_iou_pairs(rs, a, b)
    out, o = [], 0
    for g, d in zip(gi, ti):
        out.append(flat[o:o + len(g) * len(d)].reshape(len(g), len(d)))
        o += len(g) * len(d)
    return out


def _box_ious_trackeval(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """TrackEval `_calculate_box_ious` (xywh, float32 inputs), same operations."""
    b1 = b1.copy()
    b2 = b2.copy()
    b1[:, 2] = b1[:, 0] + b1[:, 2]
    b1[:, 3] = b1[:, 1] + b1[:, 3]
    b2[:, 2] = b2[:, 0] + b2[:, 2]
    b2[:, 3] = b2[:, 1] + b2[:, 3]
    mn = np.minimum(b1[:, np.newaxis, :], b2[np.newaxis, :, :])
    mx = np.maximum(b1[:, np.newaxis, :], b2[np.newaxis, :, :])
    inter = np.maximum(mn[..., 2] - mx[..., 0], 0) * np.maximum(mn[..., 3] - mx[..., 1], 0)
    a1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    a2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    union = a1[:, np.newaxis] + a2[np.newaxis, :] - inter
    inter[a1 <= 0 + _EPS, :] = 0
    inter[:, a2 <= 0 + _EPS] = 0
    inter[union <= 0 + _EPS] = 0
    union[union <= 0 + _EPS] = 1
    return inter / union
