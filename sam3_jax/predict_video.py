"""Segment and track a concept through a video from the command line.

    python -m sam3_jax.predict_video --checkpoint DIR --video FRAMES_DIR --text "person" --out OUT/ \
        [--direction forward|backward|both] [--start_frame N] [--max_frames N] [--max_objects 16] \
        [--detection_threshold 0.5] [--new_track_threshold 0.7]

FRAMES_DIR holds the frames as image files (read in name order, lazily). Writes, as frames come out:
OUT/frames.jsonl (one line per frame: its objects' ids, scores, boxes [x, y, w, h] in pixels and
compressed RLE masks); at the end OUT/predictions.json (one record per object in the video results
format `evaluate.py` reads: video_id, category_id, score, per-frame segmentations / bboxes / areas,
null where the object is absent) and OUT/overlay.gif (masks tinted by object id, the same colour on
every frame). Exit status 1 on bad input, with the reason on stderr.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

_CKPT = flags.DEFINE_string("checkpoint", None, "Directory written by convert_weights.py (with the tracker).")
_VIDEO = flags.DEFINE_string("video", None, "Folder of frames (image files, name order).")
_TEXT = flags.DEFINE_string("text", None, "Noun-phrase prompt.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_DIRECTION = flags.DEFINE_enum("direction", "forward", ["forward", "backward", "both"], "Propagation direction.")
_START = flags.DEFINE_integer("start_frame", 0, "Frame the prompt is given on and propagation starts from.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Frames to propagate (default: to the end).")
_MAX_OBJECTS = flags.DEFINE_integer("max_objects", 16, "Object slots of the video state.")
_DET_THRESHOLD = flags.DEFINE_float("detection_threshold", 0.5, "Detection probability threshold (official 0.5).")
_NEW_THRESHOLD = flags.DEFINE_float("new_track_threshold", 0.7, "Score a detection needs to start a track (official 0.7).")
_VIDEO_ID = flags.DEFINE_integer("video_id", 0, "video_id written into predictions.json.")
_GIF_SIDE = flags.DEFINE_integer("gif_side", 320, "Longest side of the overlay GIF's frames.")


def _records(lines: list[dict], num_frames: int, video_id: int) -> list[dict]:
    """Per-frame objects -> one video-results record per object id."""
    tracks: dict[int, dict] = {}
    for line in lines:
        for obj in line["objects"]:
            t = tracks.setdefault(obj["id"], {"video_id": video_id, "category_id": 1, "score": obj["score"],
                                              "segmentations": [None] * num_frames, "bboxes": [None] * num_frames,
                                              "areas": [None] * num_frames})
            f = line["frame"]
            t["segmentations"][f], t["bboxes"][f], t["areas"][f] = obj["mask"], obj["box_xywh"], obj["area"]
    return [tracks[k] for k in sorted(tracks)]


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    for name, flag in (("--checkpoint", _CKPT), ("--video", _VIDEO), ("--text", _TEXT), ("--out", _OUT)):
        if not flag.value:
            raise app.UsageError(f"{name} is required")
    import dataclasses

    import numpy as np
    from tqdm import tqdm

    from sam3_jax.formats.masks import encode_mask
    from sam3_jax.model.video.merge import MergeConfig
    from sam3_jax.model.video.step import VideoConfig
    from sam3_jax.predict.overlay import overlay
    from sam3_jax.predict.video import Sam3VideoPredictor

    try:
        if _MAX_OBJECTS.value < 1:
            raise ValueError(f"--max_objects must be >= 1, got {_MAX_OBJECTS.value}")
        merge = dataclasses.replace(MergeConfig(), score_threshold_detection=_DET_THRESHOLD.value,
                                    new_det_thresh=_NEW_THRESHOLD.value)
        vcfg = dataclasses.replace(VideoConfig(), max_objects=_MAX_OBJECTS.value, merge=merge)
        predictor = Sam3VideoPredictor.from_checkpoint(_CKPT.value, vcfg)
        predictor.start_session(_VIDEO.value)
        n = predictor.num_frames
        os.makedirs(_OUT.value, exist_ok=True)
        h, w = predictor._frames.hw
        scale = np.array([w, h, w, h], np.float32)
        first = predictor.add_prompt(_START.value, _TEXT.value)
        del first  # propagation yields the prompted frame again
        lines, gif = [], {}
        side = max(h, w)
        small = (max(1, round(w * _GIF_SIDE.value / side)), max(1, round(h * _GIF_SIDE.value / side)))
        jsonl = os.path.join(_OUT.value, "frames.jsonl")
        with open(jsonl + ".tmp", "w") as fh:
            for f, out in tqdm(predictor.propagate(_DIRECTION.value, max_frames=_MAX_FRAMES.value), total=n,
                               desc="frames", unit="frame"):
                objs = [{"id": int(i), "score": float(s), "box_xywh": [float(v) for v in b * scale],
                         "area": int(m.sum()), "mask": encode_mask(m)}
                        for i, s, b, m in zip(out["obj_ids"], out["scores"], out["boxes_xywh"], out["masks"])]
                line = {"frame": int(f), "objects": objs}
                fh.write(json.dumps(line) + "\n")
                fh.flush()
                lines.append(line)
                xyxy = out["boxes_xywh"] * scale
                xyxy[:, 2:] += xyxy[:, :2]
                pic = overlay(predictor._frames[f], out["masks"], xyxy, out["scores"], color_ids=out["obj_ids"])
                gif[int(f)] = pic.resize(small)
        os.replace(jsonl + ".tmp", jsonl)
        preds = os.path.join(_OUT.value, "predictions.json")
        with open(preds + ".tmp", "w") as fh:
            json.dump(_records(lines, n, _VIDEO_ID.value), fh)
        os.replace(preds + ".tmp", preds)
        if gif:
            frames = [gif[k] for k in sorted(gif)]
            frames[0].save(os.path.join(_OUT.value, "overlay.gif"), save_all=True, append_images=frames[1:],
                           duration=100, loop=0)
        counts = predictor.counts
        print(f"{len(lines)} frames, {len({o['id'] for ln in lines for o in ln['objects']})} objects; "
              f"births dropped for lack of slots: {counts['births_dropped']}; wrote {jsonl}, {preds}, "
              f"{os.path.join(_OUT.value, 'overlay.gif')}")
    except (ValueError, FileNotFoundError, IndexError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
