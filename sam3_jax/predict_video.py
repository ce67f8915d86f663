"""Segment and track a concept through a video from the command line.

    python -m sam3_jax.predict_video --checkpoint DIR --video FRAMES_DIR|VIDEO_FILE --text "person" [--text "dog"] \
        --out OUT/ [--exemplar X0,Y0,X1,Y1[,LABEL]] [--direction forward|backward|both] [--start_frame N] \
        [--max_frames N] [--max_objects 16] [--detection_threshold 0.5] [--new_track_threshold 0.7] \
        [--points FRAME:OBJ_ID:X,Y,LABEL[;X,Y,LABEL...]] [--box FRAME:OBJ_ID:X0,Y0,X1,Y1]

--exemplar: an exemplar box on --start_frame (relative coordinates; LABEL 1 positive, the default,
or 0), the official video model's visual prompt: with --text it joins the first text's prompt on
that frame, alone it is the concept (new objects on that frame only; prompt "visual").

With --points / --box (repeatable; coordinates relative to the frame's width and height; labels 1
positive, 0 negative; an unknown OBJ_ID adds a new object): the concept is tracked first, then the
clicks refine those objects (or add them) and the tracker propagates them forward and backward from
the first clicked frame, as in the official interactive session; the files hold the refined result.

FRAMES_DIR holds the frames as image files (read in name order, lazily); a VIDEO_FILE is decoded
lazily with PyAV (the "video" extra). Writes, as frames come out:
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
_VIDEO = flags.DEFINE_string("video", None, "Folder of frames (image files, name order) or a video file (PyAV).")
_TEXT = flags.DEFINE_multi_string("text", [], "Noun-phrase prompt; repeat for several concepts in one session "
                                  "(category_id 1, 2, ... in predictions.json).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_DIRECTION = flags.DEFINE_enum("direction", "forward", ["forward", "backward", "both"], "Propagation direction.")
_START = flags.DEFINE_integer("start_frame", 0, "Frame the prompt is given on and propagation starts from.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Frames to propagate (default: to the end).")
_MAX_OBJECTS = flags.DEFINE_integer("max_objects", 16, "Object slots of the video state.")
_DET_THRESHOLD = flags.DEFINE_float("detection_threshold", 0.5, "Detection probability threshold (official 0.5).")
_NEW_THRESHOLD = flags.DEFINE_float("new_track_threshold", 0.7, "Score a detection needs to start a track (official 0.7).")
_POINTS = flags.DEFINE_multi_string("points", [], "Clicks FRAME:OBJ_ID:X,Y,LABEL[;X,Y,LABEL...] (relative x, y).")
_BOX = flags.DEFINE_multi_string("box", [], "A box prompt FRAME:OBJ_ID:X0,Y0,X1,Y1 (relative).")
_EXEMPLAR = flags.DEFINE_string("exemplar", None, "An exemplar box X0,Y0,X1,Y1[,LABEL] (relative) on --start_frame.")
_VIDEO_ID = flags.DEFINE_integer("video_id", 0, "video_id written into predictions.json.")
_GIF_SIDE = flags.DEFINE_integer("gif_side", 320, "Longest side of the overlay GIF's frames.")


def _records(lines: list[dict], num_frames: int, video_id: int, texts: list[str]) -> list[dict]:
    """Per-frame objects -> one video-results record per object id (category_id: 1 + its prompt's index)."""
    tracks: dict[int, dict] = {}
    for line in lines:
        for obj in line["objects"]:
            cat = 1 + texts.index(obj["prompt"])
            t = tracks.setdefault(obj["id"], {"video_id": video_id, "category_id": cat, "score": obj["score"],
                                              "segmentations": [None] * num_frames, "bboxes": [None] * num_frames,
                                              "areas": [None] * num_frames})
            f = line["frame"]
            t["segmentations"][f], t["bboxes"][f], t["areas"][f] = obj["mask"], obj["box_xywh"], obj["area"]
    return [tracks[k] for k in sorted(tracks)]


def _parse_clicks(points: list[str], boxes: list[str]) -> list[tuple]:
    """--points / --box values -> [(kind, frame, obj_id, values)] in the order given."""
    out = []
    for kind, specs, width in (("points", points, 3), ("box", boxes, 4)):
        for spec in specs:
            parts = spec.split(":")
            try:
                if len(parts) != 3:
                    raise ValueError
                frame, obj_id = int(parts[0]), int(parts[1])
                rows = [[float(v) for v in chunk.split(",")] for chunk in parts[2].split(";") if chunk.strip()]
                if not rows or any(len(r) != width for r in rows) or (kind == "box" and len(rows) != 1):
                    raise ValueError
            except ValueError:
                form = "FRAME:OBJ_ID:X,Y,LABEL[;X,Y,LABEL...]" if kind == "points" else "FRAME:OBJ_ID:X0,Y0,X1,Y1"
                raise ValueError(f"--{kind} {spec!r} is not {form}") from None
            out.append((kind, frame, obj_id, rows))
    return out


def _parse_exemplar(spec: str) -> dict:
    """--exemplar X0,Y0,X1,Y1[,LABEL] -> add_prompt's boxes / box_labels."""
    try:
        v = [float(x) for x in spec.split(",")]
        if len(v) not in (4, 5) or (len(v) == 5 and v[4] not in (0.0, 1.0)):
            raise ValueError
    except ValueError:
        raise ValueError(f"--exemplar {spec!r} is not X0,Y0,X1,Y1[,LABEL] (LABEL 1 or 0)") from None
    return {"boxes": [v[:4]], "box_labels": [bool(v[4]) if len(v) == 5 else True]}


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    for name, flag in (("--checkpoint", _CKPT), ("--video", _VIDEO), ("--out", _OUT)):
        if not flag.value:
            raise app.UsageError(f"{name} is required")
    if not _TEXT.value and not _EXEMPLAR.value:
        raise app.UsageError("--text or --exemplar is required")
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
        clicks = _parse_clicks(_POINTS.value, _BOX.value)  # malformed flags fail before the model loads
        exemplar = _parse_exemplar(_EXEMPLAR.value) if _EXEMPLAR.value else None
        predictor = Sam3VideoPredictor.from_checkpoint(_CKPT.value, vcfg)
        predictor.start_session(_VIDEO.value, cache_outputs=bool(clicks))  # clicks need the cached outputs
        n = predictor.num_frames
        os.makedirs(_OUT.value, exist_ok=True)
        h, w = predictor._frames.hw
        scale = np.array([w, h, w, h], np.float32)
        texts = list(_TEXT.value)
        prompts = [(t, {}) for t in texts]
        if exemplar:
            if prompts:
                prompts[0] = (texts[0], exemplar)
            else:
                prompts, texts = [(None, exemplar)], ["visual"]
        for k, (text, box) in enumerate(prompts):  # propagation yields the prompted frame again
            predictor.add_prompt(_START.value, text, append=k > 0, **box)
        frames = predictor.propagate(_DIRECTION.value, max_frames=_MAX_FRAMES.value)
        if clicks:
            # track the concept, refine with the clicks, propagate the refined objects both ways from
            # the first clicked frame; then the cached (refined) outputs are written
            for _ in tqdm(frames, total=n, desc="tracking", unit="frame"):
                pass
            for kind, frame, obj_id, rows in clicks:
                if kind == "box":
                    predictor.add_box(frame, obj_id, rows[0])
                else:
                    arr = np.asarray(rows, np.float64)
                    predictor.add_points(frame, obj_id, arr[:, :2], arr[:, 2].astype(np.int32))
            for direction in ("forward", "backward"):
                for _ in tqdm(predictor.propagate(direction, start_frame=clicks[0][1]), desc=f"refining ({direction})",
                              unit="frame"):
                    pass
            frames = predictor.propagate(_DIRECTION.value, max_frames=_MAX_FRAMES.value)
        lines, gif = [], {}
        side = max(h, w)
        small = (max(1, round(w * _GIF_SIDE.value / side)), max(1, round(h * _GIF_SIDE.value / side)))
        jsonl = os.path.join(_OUT.value, "frames.jsonl")
        with open(jsonl + ".tmp", "w") as fh:
            for f, out in tqdm(frames, total=n, desc="frames", unit="frame"):
                prompts = out.get("prompts", texts[:1] * len(out["obj_ids"]))
                objs = [{"id": int(i), "prompt": t, "score": float(s), "box_xywh": [float(v) for v in b * scale],
                         "area": int(m.sum()), "mask": encode_mask(m)}
                        for i, t, s, b, m in zip(out["obj_ids"], prompts, out["scores"], out["boxes_xywh"],
                                                 out["masks"])]
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
            json.dump(_records(lines, n, _VIDEO_ID.value, texts), fh)
        os.replace(preds + ".tmp", preds)
        if gif:
            frames = [gif[k] for k in sorted(gif)]
            frames[0].save(os.path.join(_OUT.value, "overlay.gif"), save_all=True, append_images=frames[1:],
                           duration=100, loop=0)
        counts = predictor.counts
        print(f"{len(lines)} frames, {len({o['id'] for ln in lines for o in ln['objects']})} objects; "
              f"births dropped for lack of slots: {counts['births_dropped']}; wrote {jsonl}, {preds}, "
              f"{os.path.join(_OUT.value, 'overlay.gif')}")
    except (ValueError, TypeError, FileNotFoundError, IndexError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
