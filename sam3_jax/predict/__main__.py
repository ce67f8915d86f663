"""`python -m sam3_jax.predict --checkpoint DIR --image photo.jpg --text "a dog" [--boxes x0,y0,x1,y1 ...] --out OUT/`

Writes OUT/predictions.json (boxes xyxy in pixels, scores, COCO-style uncompressed RLE masks) and
OUT/overlay.png (masks, boxes and scores drawn on the photo). Exit status 1 on bad input.
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
_OUT = flags.DEFINE_string("out", None, "Output directory.")


def _parse_box(s: str) -> list[float]:
    parts = s.replace(" ", "").split(",")
    if len(parts) != 4:
        raise ValueError(f"--boxes expects 'x0,y0,x1,y1', got {s!r}")
    return [float(p) for p in parts]


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    for name, flag in (("--checkpoint", _CKPT), ("--image", _IMAGE), ("--out", _OUT)):
        if not flag.value:
            raise app.UsageError(f"{name} is required")
    import numpy as np
    from PIL import Image

    from sam3_jax.formats.masks import rle_encode
    from sam3_jax.predict.overlay import overlay
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    try:
        if not os.path.isfile(_IMAGE.value):
            raise FileNotFoundError(f"image file not found: {_IMAGE.value}")
        image = np.asarray(Image.open(_IMAGE.value).convert("RGB"))
        boxes = [_parse_box(b) for b in _BOXES.value] or None
        labels = None
        if boxes:
            bad = [i for i in _NEG.value if not 0 <= i < len(boxes)]
            if bad:
                raise ValueError(f"--negative indices {bad} out of range for {len(boxes)} boxes")
            labels = np.array([i not in set(_NEG.value) for i in range(len(boxes))])
        predictor = Sam3ImagePredictor.from_checkpoint(_CKPT.value)
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
        "text": _TEXT.value,
        "boxes_prompt": boxes,
        "threshold": _THRESHOLD.value,
        "detections": [
            {"box_xyxy": [float(v) for v in b], "score": float(s), "mask_rle": rle_encode(m)}
            for b, s, m in zip(out["boxes"], out["scores"], out["masks"])
        ],
    }
    with open(os.path.join(_OUT.value, "predictions.json"), "w") as f:
        json.dump(record, f)
    overlay(image, out["masks"], out["boxes"], out["scores"]).save(os.path.join(_OUT.value, "overlay.png"))
    print(f"{len(out['scores'])} detections; wrote {_OUT.value}/predictions.json and overlay.png")
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
