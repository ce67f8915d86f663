"""Segment one image from the command line.

Concept prompts (every instance of a noun phrase and / or exemplar boxes):

    python -m sam3_jax.predict --checkpoint DIR --image photo.jpg --text "a dog" [--boxes x0,y0,x1,y1 ...] --out OUT/

writes OUT/predictions.json (`detections`: boxes xyxy in pixels, scores, COCO-style uncompressed
RLE masks) and OUT/overlay.png (masks, boxes and scores drawn on the photo).

Instance prompts (one object from clicks and / or a box; needs a checkpoint converted with the
tracker):

    python -m sam3_jax.predict --checkpoint DIR --image photo.jpg --points 120,80 --points 60,90 \
        --point_labels 1,0 [--instance_box x0,y0,x1,y1] [--nomultimask] --out OUT/

writes OUT/predictions.json (`instances`: one entry per output mask, 3 with --multimask (the
default) or 1 with --nomultimask, each with its predicted IoU, the box around the mask and the
mask as RLE; `best` is the index of the highest IoU) and OUT/overlay.png (the best mask, the
clicks (green positive, red negative) and the prompt box). --point_labels defaults to all
positive. Instance flags cannot be mixed with --text / --boxes.

--dtype bfloat16 runs the bf16 path (the default is the checkpoint's stored dtype, so a checkpoint
converted with `convert_weights.py --dtype bfloat16` runs in bf16).

Exit status 1 on bad input, with the reason on stderr.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

_CKPT = flags.DEFINE_string("checkpoint", None, "Directory written by convert_weights.py.")
_IMAGE = flags.DEFINE_string("image", None, "Image file (anything Pillow reads).")
_TEXT = flags.DEFINE_string("text", None, "Noun-phrase prompt.")
_BOXES = flags.DEFINE_multi_string("boxes", [], "Exemplar box 'x0,y0,x1,y1' in pixels (repeat the flag).")
_NEG = flags.DEFINE_multi_integer("negative", [], "Indices of --boxes that are negative exemplars.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.5, "Score threshold (0 keeps every query).")
_POINTS = flags.DEFINE_multi_string("points", [], "Instance click 'x,y' in pixels (repeat the flag).")
_POINT_LABELS = flags.DEFINE_string("point_labels", None,
                                    "Labels of --points, comma separated: 1 positive, 0 negative (default all 1).")
_INSTANCE_BOX = flags.DEFINE_string("instance_box", None, "Instance box prompt 'x0,y0,x1,y1' in pixels.")
_MULTIMASK = flags.DEFINE_bool("multimask", True, "Instance prompts: 3 candidate masks (else 1).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Compute dtype (default: the checkpoint's stored dtype).")


def _parse_numbers(s: str, n: int | None, flag: str, form: str, kind=float) -> list:
    parts = s.replace(" ", "").split(",")
    if n is not None and len(parts) != n:
        raise ValueError(f"{flag} expects '{form}', got {s!r}")
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise ValueError(f"{flag} expects '{form}', got {s!r}") from None


def _parse_box(s: str) -> list[float]:
    return _parse_numbers(s, 4, "--boxes", "x0,y0,x1,y1")


def _mask_box(mask) -> list[float] | None:
    """xyxy pixel box around a mask (None when empty)."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _instance_prompts():
    """(points, labels, box) from the instance flags (None each when absent)."""
    points = [_parse_numbers(p, 2, "--points", "x,y") for p in _POINTS.value] or None
    labels = None
    if _POINT_LABELS.value is not None:
        if points is None:
            raise ValueError("--point_labels given without --points")
        labels = _parse_numbers(_POINT_LABELS.value, None, "--point_labels", "1,0,...", int)
        if len(labels) != len(points):
            raise ValueError(f"--point_labels has {len(labels)} labels for {len(points)} --points")
    elif points is not None:
        labels = [1] * len(points)
    box = None if _INSTANCE_BOX.value is None else _parse_numbers(_INSTANCE_BOX.value, 4, "--instance_box",
                                                                   "x0,y0,x1,y1")
    return points, labels, box


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    for name, flag in (("--checkpoint", _CKPT), ("--image", _IMAGE), ("--out", _OUT)):
        if not flag.value:
            raise app.UsageError(f"{name} is required")
    instance_mode = bool(_POINTS.value) or _INSTANCE_BOX.value is not None or _POINT_LABELS.value is not None
    if instance_mode and (_TEXT.value is not None or _BOXES.value or _NEG.value):
        print("error: instance prompts (--points / --point_labels / --instance_box) cannot be mixed with "
              "--text / --boxes / --negative", file=sys.stderr)
        return 1
    if instance_mode:  # flag syntax errors before the (slow) imports
        try:
            points, point_labels, inst_box = _instance_prompts()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    import numpy as np
    from PIL import Image

    from sam3_jax.formats.masks import rle_encode
    from sam3_jax.predict.overlay import draw_prompts, overlay
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    try:
        if not os.path.isfile(_IMAGE.value):
            raise FileNotFoundError(f"image file not found: {_IMAGE.value}")
        image = np.asarray(Image.open(_IMAGE.value).convert("RGB"))
        if instance_mode:
            predictor = Sam3ImagePredictor.from_checkpoint(_CKPT.value, dtype=_DTYPE.value)
            predictor.set_image(image)
            out = predictor.predict_instance(points=points, point_labels=point_labels, box=inst_box,
                                             multimask_output=_MULTIMASK.value)
        else:
            boxes = [_parse_box(b) for b in _BOXES.value] or None
            labels = None
            if boxes:
                bad = [i for i in _NEG.value if not 0 <= i < len(boxes)]
                if bad:
                    raise ValueError(f"--negative indices {bad} out of range for {len(boxes)} boxes")
                labels = np.array([i not in set(_NEG.value) for i in range(len(boxes))])
            predictor = Sam3ImagePredictor.from_checkpoint(_CKPT.value, dtype=_DTYPE.value)
            predictor.set_image(image)
            out = predictor.predict(text=_TEXT.value, boxes=boxes, box_labels=labels, threshold=_THRESHOLD.value)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(_OUT.value, exist_ok=True)
    record = {
        "image": os.path.abspath(_IMAGE.value),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
    }
    if instance_mode:
        best = int(np.argmax(out["iou"]))
        boxes_out = [_mask_box(m) for m in out["masks"]]
        record.update({
            "points": points,
            "point_labels": point_labels,
            "instance_box": inst_box,
            "multimask_output": _MULTIMASK.value,
            "best": best,
            "instances": [
                {"iou": float(s), "box_xyxy": b, "mask_rle": rle_encode(m)}
                for s, b, m in zip(out["iou"], boxes_out, out["masks"])
            ],
        })
        shown = [best] if boxes_out[best] is not None else []
        pil = overlay(image, out["masks"][[best]], np.array([boxes_out[i] for i in shown]).reshape(-1, 4),
                      [float(out["iou"][i]) for i in shown])
        pil = draw_prompts(pil, points, point_labels, inst_box)
        summary = f"{len(out['iou'])} masks (best IoU {float(out['iou'][best]):.3f})"
    else:
        record.update({
            "text": _TEXT.value,
            "boxes_prompt": boxes,
            "threshold": _THRESHOLD.value,
            "detections": [
                {"box_xyxy": [float(v) for v in b], "score": float(s), "mask_rle": rle_encode(m)}
                for b, s, m in zip(out["boxes"], out["scores"], out["masks"])
            ],
        })
        pil = overlay(image, out["masks"], out["boxes"], out["scores"])
        summary = f"{len(out['scores'])} detections"
    with open(os.path.join(_OUT.value, "predictions.json"), "w") as f:
        json.dump(record, f)
    pil.save(os.path.join(_OUT.value, "overlay.png"))
    print(f"{summary}; wrote {_OUT.value}/predictions.json and overlay.png")
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
