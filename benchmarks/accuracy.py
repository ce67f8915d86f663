#!/usr/bin/env python
"""Accuracy of sam3_jax's inference paths against the official float32 model, query by query.

The official `Sam3Processor` (float32) and `Sam3ImagePredictor` in float32 and in bfloat16 (params
cast to bf16, `model.dtype=bfloat16`: the bf16 path of `convert_weights.py --dtype bfloat16`) run
on the same seeded random weights, photo (`skimage.data.astronaut()`) and text prompts, every query
kept (threshold 0). For each prompt and path it prints the largest score difference, the keep
box error in pixels and the mask IoU of every query, and the keep decisions that differ at the
threshold (default: the median official score, so about half of the queries count as detections
with random weights), all of them and those of queries whose official score is more than 0.01 from
the threshold (`sam3_jax.parity.detections.agreement`).

    python benchmarks/accuracy.py --config full        # 1008 px: several minutes on a CPU
    python benchmarks/accuracy.py --config tiny --json out/accuracy_tiny.json

The bounds `tests/test_predictor.py::test_bf16_path_meets_documented_bounds` enforces at the tiny
config come from these figures (README).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import numpy as np

TEXTS = ["a person", "a helmet", "a flag", "the sky"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", default="median", help="'median' (of the official scores) or a number")
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import jax.numpy as jnp
    import skimage.data

    from bench_infer import cast_params
    from sam3_jax.config import model_config
    from sam3_jax.convert import convert_image_model
    from sam3_jax.parity import oracle
    from sam3_jax.parity.detections import agreement, official_detections
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    cfg = model_config(args.config)
    photo = skimage.data.astronaut()
    model = oracle.random_image_model(cfg, args.seed)
    params, _ = convert_image_model(oracle.state_dict_numpy(model), cfg)
    refs = official_detections(model, cfg, photo, TEXTS)
    rows = []
    for dtype in ("float32", "bfloat16"):
        c = cfg.copy_and_resolve_references()
        c.dtype = dtype
        pred = Sam3ImagePredictor(cast_params(params, jnp.dtype(dtype)), c)
        pred.set_image(photo)
        outs = pred.predict_batch(TEXTS, threshold=0.0)
        for text, ref, ours in zip(TEXTS, refs, outs):
            thr = float(np.median(ref["scores"])) if args.threshold == "median" else float(args.threshold)
            rows.append({"dtype": dtype, "text": text, **agreement(ref, ours, thr)})
    print(f"config {args.config} ({cfg.image_size} px), photo astronaut, seed {args.seed}, official float32")
    head = ("dtype", "text", "score_abs_max", "box_err_px_max", "box_err_px_mean", "mask_iou_min",
            "mask_iou_mean", "kept_ref", "kept_ours", "keep_flips", "keep_flips_clear")
    print("  ".join(f"{h:>15s}" for h in head))
    for r in rows:
        print("  ".join(f"{r[h]:>15.4g}" if isinstance(r[h], float) else f"{r[h]!s:>15s}" for h in head))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "seed": args.seed, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
