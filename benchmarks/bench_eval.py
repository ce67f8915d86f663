#!/usr/bin/env python
"""Times the official SA-Co scorer (`sam3.eval.cgf1_eval.CGF1Evaluator`) against
`sam3_jax.eval` on a generated set of image-phrase pairs with masks, in one run, and prints both
times and the ratio. Both sides start from the same JSON files and end at the metric dict.

    .venv/bin/python benchmarks/bench_eval.py [--pairs 10000] [--annotators 1] [--iou_type segm]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
import warnings

import numpy as np


def make_set(n_pairs: int, annotators: int, seed: int = 0, lo_px: int = 96, hi_px: int = 256):
    """SA-Co/Gold-like files: ~45% negative pairs, 1-4 GT masks on positives (some crowd), 1-5
    predictions on positives (mostly near a GT mask), 0-2 on negatives, images 96-256 px a side."""
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(seed)

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": r["counts"].decode("ascii")}

    def blob(h, w, cy=None, cx=None, ry=None, rx=None):
        cy = rng.uniform(0, h) if cy is None else cy
        cx = rng.uniform(0, w) if cx is None else cx
        ry = rng.uniform(4, h / 3) if ry is None else ry
        rx = rng.uniform(4, w / 3) if rx is None else rx
        yy, xx = np.ogrid[:h, :w]
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0, (cy, cx, ry, rx)

    def box(m, h, w):
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            return [0.0, 0.0, 0.0, 0.0]
        return [xs.min() / w, ys.min() / h, (xs.max() - xs.min() + 1) / w, (ys.max() - ys.min() + 1) / h]

    images, gts_ann, preds = [], [[] for _ in range(annotators)], []
    aid = 1
    for i in range(n_pairs):
        h, w = int(rng.integers(lo_px, hi_px + 1)), int(rng.integers(lo_px, hi_px + 1))
        images.append({"id": i + 1, "file_name": f"img_{i // 3}.jpg", "text_input": f"phrase {i}", "height": h,
                       "width": w, "is_instance_exhaustive": 1, "is_pixel_exhaustive": 1, "queried_category": "0"})
        params = []
        if rng.random() > 0.45:
            for _ in range(int(rng.integers(1, 5))):
                m, prm = blob(h, w)
                params.append(prm)
                for a in range(annotators):
                    jitter = rng.normal(0, 2, size=2)
                    mm = m if a == 0 else blob(h, w, prm[0] + jitter[0], prm[1] + jitter[1], prm[2], prm[3])[0]
                    gts_ann[a].append({"id": aid, "image_id": i + 1, "segmentation": rle(mm), "bbox": box(mm, h, w),
                                       "area": float(mm.sum()) / (h * w), "iscrowd": int(rng.random() < 0.05),
                                       "category_id": 1, "source": "manual"})
                    aid += 1
        n_dt = int(rng.integers(1, 6)) if params else (int(rng.integers(1, 3)) if rng.random() < 0.3 else 0)
        for _ in range(n_dt):
            near = bool(params) and rng.random() < 0.75
            if near:
                cy, cx, ry, rx = params[int(rng.integers(len(params)))]
                dy, dx = rng.normal(0, 3, size=2)
                sy, sx = rng.uniform(0.8, 1.2, size=2)
                m = blob(h, w, cy + dy, cx + dx, ry * sy, rx * sx)[0]
            else:
                m = blob(h, w)[0]
            score = rng.uniform(0.45, 1.0) if near else rng.uniform(0.05, 0.7)
            preds.append({"image_id": i + 1, "category_id": 1, "segmentation": rle(m), "bbox": box(m, h, w),
                          "score": round(float(score), 5)})
    cats = [{"id": 1, "name": "object"}]
    return [{"info": {}, "images": images, "annotations": g, "categories": cats} for g in gts_ann], preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10000)
    ap.add_argument("--annotators", type=int, default=1)
    ap.add_argument("--iou_type", default="segm", choices=["segm", "bbox"])
    ap.add_argument("--size", type=int, nargs=2, default=[96, 256], metavar=("MIN", "MAX"),
                    help="image side range in pixels")
    ap.add_argument("--backend", default="pycocotools", choices=["pycocotools", "numpy"],
                    help="mask IoU backend of sam3_jax.eval (numpy = --strict_masks of evaluate.py)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side; the fastest of each is compared")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from sam3.eval.cgf1_eval import CGF1Evaluator

    from sam3_jax.eval import evaluate_image, load_image_gt, load_image_predictions

    t0 = time.time()
    gts, preds = make_set(args.pairs, args.annotators, lo_px=args.size[0], hi_px=args.size[1])
    with tempfile.TemporaryDirectory() as d:
        gt_paths = []
        for a, g in enumerate(gts):
            gt_paths.append(os.path.join(d, f"gt_{a}.json"))
            with open(gt_paths[-1], "w") as f:
                json.dump(g, f)
        pred_path = os.path.join(d, "preds.json")
        with open(pred_path, "w") as f:
            json.dump(preds, f)
        n_masks = sum(len(g["annotations"]) for g in gts) + len(preds)
        print(f"generated {args.pairs} pairs, {len(preds)} predictions, {n_masks} masks in total "
              f"({args.annotators} GT file(s)) in {time.time() - t0:.1f} s")

        def official():
            with contextlib.redirect_stdout(io.StringIO()):
                ev = CGF1Evaluator(gt_path=gt_paths if len(gt_paths) > 1 else gt_paths[0], iou_type=args.iou_type)
                return ev.evaluate(pred_path)

        def ours():
            g = load_image_gt(gt_paths)
            p = load_image_predictions(pred_path, g[0], need_masks=args.iou_type == "segm")
            return evaluate_image(g, p, args.iou_type, backend=args.backend)["metrics"]

        t_off, t_ours = [], []
        for _ in range(max(1, args.repeats)):  # alternate, so both sides see the same machine state
            t0 = time.perf_counter()
            ref = official()
            t_off.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = ours()
            t_ours.append(time.perf_counter() - t0)

    t_off, t_ours = min(t_off), min(t_ours)
    ours = res
    diff = max(abs(ref[k] - ours[k]) for k in ref)
    print(f"official CGF1Evaluator : {t_off:8.2f} s  (JSON files -> metrics; fastest of {args.repeats})")
    print(f"sam3_jax.eval          : {t_ours:8.2f} s  (JSON files -> metrics; fastest of {args.repeats}; "
          f"{args.backend} mask IoU)")
    print(f"speed-up (official / ours): {t_off / t_ours:.1f}x")
    key = f"cgF1_eval_{args.iou_type}_cgF1"
    print(f"cgF1 {ours[key]:.6f} (official {ref[key]:.6f}); "
          f"max |difference| over the {len(ref)} metrics: {diff:.3g}")


if __name__ == "__main__":
    main()
