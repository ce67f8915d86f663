"""Video evaluation inputs: SA-Co/VEval ground truth and video predictions in the official results
format, read and validated.

* Ground truth (YT-VIS-like): `videos[]`, `annotations[]` with per-frame `segmentations` /
  `bboxes` / `areas` (null where the object is absent) and `video_np_pairs[]`.
* Predictions: `[{video_id, category_id, score, segmentations, bboxes, areas}]`, one record per
  track; masks are normalised to compressed RLE (`sam3_jax.formats.masks`).
* What a predictor needs to produce them (`evaluate.py --checkpoint --videos`): the video-phrase
  pairs to prompt (`video_prompts`) and each video's frame files (`video_frame_paths`: the GT's
  `file_names`, relative to a frame root as SA-Co/VEval's are to its JPEGImages folder, else the
  images of the folder named by `video_name`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from sam3_jax.eval.input_checks import EvalInputError, check_box, load_json, mask_errors_as_input_errors
from sam3_jax.formats.masks import to_compressed_rle
from sam3_jax.formats.scalars import is_int, is_number

__all__ = [
    "VideoGT",
    "validate_video_gt",
    "load_video_gt",
    "validate_video_predictions",
    "load_video_predictions",
    "video_prompts",
    "video_frame_paths",
    "FRAME_EXTENSIONS",
]

# frame files a folder given without `file_names` is read from (name order)
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# --------------------------------------------------------------------------------------------- ground truth
@dataclass
class VideoGT:
    """A validated SA-Co/VEval (YT-VIS-like) ground-truth file."""

    path: str
    videos: dict  # id -> video dict (+ "_T": number of frames)
    anns: list  # annotation dicts (file order), segmentations normalised to compressed RLE / None
    np_pairs: Optional[list]  # [(video_id, category_id)] from video_np_pairs, or None when absent
    raw: dict = field(default_factory=dict, repr=False)

    def num_frames(self, video_id) -> int:
        return self.videos[video_id]["_T"]


def _check_masklet(rec: dict, where: str, T: int, h: int, w: int, need_boxes: bool) -> None:
    segs = rec.get("segmentations")
    if not isinstance(segs, list):
        raise EvalInputError(f"{where} has no 'segmentations' list")
    if len(segs) != T:
        raise EvalInputError(f"{where} has {len(segs)} frames of segmentations but its video has {T}")
    rec["segmentations"] = [None if s is None else to_compressed_rle(s, h, w, f"{where} frame {t}")
                            for t, s in enumerate(segs)]
    boxes = rec.get("bboxes")
    if boxes is None:
        if need_boxes:
            raise EvalInputError(f"{where} has no 'bboxes' list")
    else:
        if not isinstance(boxes, list) or len(boxes) != T:
            raise EvalInputError(f"{where}: 'bboxes' must be a list of {T} boxes (null where absent)")
        rec["bboxes"] = [None if b is None else check_box(b, f"{where} frame {t}") for t, b in enumerate(boxes)]
    areas = rec.get("areas")
    if areas is not None:
        if not isinstance(areas, list) or len(areas) != T or not all(a is None or is_number(a) for a in areas):
            raise EvalInputError(f"{where}: 'areas' must be a list of {T} numbers (null where absent)")


def validate_video_gt(data: Any, name: str = "gt") -> VideoGT:
    with mask_errors_as_input_errors():
        return _validate_video_gt(data, name)


def _validate_video_gt(data: Any, name: str) -> VideoGT:
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise EvalInputError(f"{name}: video ground truth must be a JSON object with a 'videos' list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise EvalInputError(f"{name}: 'annotations' must be a list")
    videos: dict = {}
    for i, v in enumerate(data["videos"]):
        where = f"{name}: videos[{i}]"
        if not isinstance(v, dict) or not is_int(v.get("id")):
            raise EvalInputError(f"{where} must be an object with an integer 'id'")
        vid = int(v["id"])
        if vid in videos:
            raise EvalInputError(f"{where}: duplicate video id {vid}")
        for k in ("height", "width"):
            if not is_int(v.get(k)) or v[k] <= 0:
                raise EvalInputError(f"{where} (id {vid}): '{k}' must be a positive integer, got {v.get(k)!r}")
        fn = v.get("file_names")
        if isinstance(fn, list) and fn:
            T = len(fn)
        elif is_int(v.get("length")) and v["length"] > 0:
            T = int(v["length"])
        else:
            raise EvalInputError(f"{where} (id {vid}): needs 'file_names' or a positive 'length'")
        videos[vid] = dict(v, _T=T)
    ids = set()
    out = []
    for j, a in enumerate(anns):
        where = f"{name}: annotations[{j}]"
        if not isinstance(a, dict):
            raise EvalInputError(f"{where} must be an object")
        for k in ("id", "video_id", "category_id"):
            if not is_int(a.get(k)):
                raise EvalInputError(f"{where}: '{k}' must be an integer, got {a.get(k)!r}")
        if a["id"] in ids:
            raise EvalInputError(f"{where}: duplicate annotation id {a['id']}")
        ids.add(a["id"])
        if a["video_id"] not in videos:
            raise EvalInputError(f"{where} (id {a['id']}) refers to video_id {a['video_id']}, which is not in 'videos'")
        v = videos[a["video_id"]]
        rec = dict(a)
        _check_masklet(rec, f"{where} (id {a['id']})", v["_T"], int(a.get("height", v["height"])),
                       int(a.get("width", v["width"])), need_boxes=False)
        out.append(rec)
    pairs = None
    if "video_np_pairs" in data:
        if not isinstance(data["video_np_pairs"], list):
            raise EvalInputError(f"{name}: 'video_np_pairs' must be a list")
        pairs = []
        for j, p in enumerate(data["video_np_pairs"]):
            if not isinstance(p, dict) or not is_int(p.get("video_id")) or not is_int(p.get("category_id")):
                raise EvalInputError(f"{name}: video_np_pairs[{j}] needs integer 'video_id' and 'category_id'")
            if p["video_id"] not in videos:
                raise EvalInputError(f"{name}: video_np_pairs[{j}] refers to video_id {p['video_id']}, not in 'videos'")
            pairs.append((int(p["video_id"]), int(p["category_id"])))
    return VideoGT(path=name, videos=videos, anns=out, np_pairs=pairs, raw=data)


def load_video_gt(path: str) -> VideoGT:
    return validate_video_gt(load_json(path, "ground-truth file"), str(path))


# --------------------------------------------------------------------------------------------- predictions
def validate_video_predictions(preds: Any, gt: VideoGT, name: str = "predictions") -> list[dict]:
    """Known video ids, one score per track, T frames of masks (null = absent), boxes and areas
    (derived from the masks when missing)."""
    with mask_errors_as_input_errors():
        return _validate_video_predictions(preds, gt, name)


def _validate_video_predictions(preds: Any, gt: VideoGT, name: str) -> list[dict]:
    import pycocotools.mask as mask_utils

    if not isinstance(preds, list):
        raise EvalInputError(f"{name}: video predictions must be a JSON list of "
                             "{video_id, category_id, score, segmentations} records")
    out = []
    unknown = []
    for i, p in enumerate(preds):
        where = f"{name}[{i}]"
        if not isinstance(p, dict):
            raise EvalInputError(f"{where} must be an object")
        for k in ("video_id", "category_id"):
            if not is_int(p.get(k)):
                raise EvalInputError(f"{where}: '{k}' must be an integer, got {p.get(k)!r}")
        if p["video_id"] not in gt.videos:
            unknown.append(p["video_id"])
            continue
        if not is_number(p.get("score")):
            raise EvalInputError(f"{where}: score must be a finite number (one per track), got {p.get('score')!r}")
        v = gt.videos[p["video_id"]]
        rec = dict(p)
        _check_masklet(rec, f"{where} (video_id {p['video_id']})", v["_T"], v["height"], v["width"], need_boxes=False)
        if rec.get("bboxes") is None:
            rec["bboxes"] = [None if s is None else [float(x) for x in mask_utils.toBbox(s)]
                             for s in rec["segmentations"]]
        if rec.get("areas") is None:
            rec["areas"] = [None if s is None else int(mask_utils.area(s)) for s in rec["segmentations"]]
        for t, (s, b, a) in enumerate(zip(rec["segmentations"], rec["bboxes"], rec["areas"])):
            if s is None and b is not None and a not in (None, 0) and any(x != 0 for x in b):
                raise EvalInputError(f"{where} frame {t}: has a box and an area but no mask (use null for all three)")
        out.append(rec)
    if unknown:
        uniq = list(dict.fromkeys(unknown))
        raise EvalInputError(
            f"{name}: {len(unknown)} prediction(s) refer to video ids not in the ground truth: "
            f"{uniq[:5]}{' ...' if len(uniq) > 5 else ''}"
        )
    return out


def load_video_predictions(path: str, gt: VideoGT) -> list[dict]:
    return validate_video_predictions(load_json(path, "predictions file"), gt, str(path))


# --------------------------------------------------------------------------------------------- predictor inputs
def _phrase_tables(gt: VideoGT) -> tuple[dict, dict]:
    """({(video_id, category_id): noun_phrase} from video_np_pairs, {category_id: name})."""
    by_pair = {}
    for p in gt.raw.get("video_np_pairs") or []:
        if isinstance(p.get("noun_phrase"), str):
            by_pair[(int(p["video_id"]), int(p["category_id"]))] = p["noun_phrase"]
    names = {}
    cats = gt.raw.get("categories")
    if isinstance(cats, list):
        for c in cats:
            if isinstance(c, dict) and is_int(c.get("id")) and isinstance(c.get("name"), str):
                names[int(c["id"])] = c["name"]
    for a in gt.anns:  # annotations may carry the phrase too
        if isinstance(a.get("noun_phrase"), str):
            by_pair.setdefault((a["video_id"], a["category_id"]), a["noun_phrase"])
    return by_pair, names


def video_prompts(gt: VideoGT) -> list[tuple[int, int, str]]:
    """The (video_id, category_id, noun phrase) pairs a predictor is prompted with: every
    `video_np_pairs` entry (positives and negatives, file order), then any pair that only the
    annotations name (all of them, sorted, when the file has no video_np_pairs). The phrase is the
    pair's `noun_phrase`, else its category's `name`; EvalInputError when neither is there."""
    pairs = list(dict.fromkeys(gt.np_pairs or []))
    seen = set(pairs)
    for key in sorted({(a["video_id"], a["category_id"]) for a in gt.anns}):
        if key not in seen:
            seen.add(key)
            pairs.append(key)
    by_pair, names = _phrase_tables(gt)
    out = []
    for vid, cid in pairs:
        text = by_pair.get((vid, cid), names.get(cid))
        if not isinstance(text, str) or not text.strip():
            raise EvalInputError(f"{gt.path}: no noun phrase for video {vid}, category {cid} (needs a 'noun_phrase' "
                                 "in video_np_pairs or a category 'name')")
        out.append((vid, cid, text.strip()))
    return out


def video_frame_paths(gt: VideoGT, videos_dir: str, video_ids: Optional[list] = None) -> dict[int, list[str]]:
    """{video_id: its frame files} under `videos_dir`, in frame order, for `video_ids` (default: all).

    A video with `file_names` has exactly those frames, relative to `videos_dir` (as SA-Co/VEval's
    are to its JPEGImages folder); one without has the image files of `videos_dir/<video_name>` in
    name order, as many as its `length`. Each video's first frame must have the GT's height x width.
    EvalInputError naming the missing folder or frame, or the mismatch."""
    if not os.path.isdir(videos_dir):
        raise EvalInputError(f"video directory not found: {videos_dir}")
    out = {}
    for vid in (sorted(gt.videos) if video_ids is None else video_ids):
        v = gt.videos[vid]
        label = f"video id {vid}" + (f" ({v['video_name']!r})" if isinstance(v.get("video_name"), str) else "")
        fns = v.get("file_names")
        if isinstance(fns, list) and fns:
            out[vid] = _listed_frames(fns, videos_dir, label, gt.path)
        else:
            out[vid] = _folder_frames(v, videos_dir, label, gt.path)
        _check_frame_size(out[vid][0], v["height"], v["width"], label, gt.path)
    return out


def _listed_frames(file_names: list, videos_dir: str, label: str, gt_path: str) -> list[str]:
    paths = []
    for t, fn in enumerate(file_names):
        if not isinstance(fn, str) or not fn:
            raise EvalInputError(f"{gt_path}: {label}: file_names[{t}] must be a non-empty string, got {fn!r}")
        p = os.path.join(videos_dir, fn)
        if not os.path.isfile(p):
            folder = os.path.dirname(p)
            if not os.path.isdir(folder):
                raise EvalInputError(f"video folder not found: {folder} ({label} of {gt_path})")
            raise EvalInputError(f"frame file not found: {p} (file_names[{t}] of {label} in {gt_path})")
        paths.append(p)
    return paths


def _folder_frames(video: dict, videos_dir: str, label: str, gt_path: str) -> list[str]:
    name = video.get("video_name")
    if not isinstance(name, str) or not name:
        raise EvalInputError(f"{gt_path}: {label} has neither 'file_names' nor a 'video_name' naming its folder")
    folder = os.path.join(videos_dir, name)
    if not os.path.isdir(folder):
        raise EvalInputError(f"video folder not found: {folder} ({label} of {gt_path})")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(FRAME_EXTENSIONS))
    if len(files) != video["_T"]:
        raise EvalInputError(f"video folder {folder} holds {len(files)} frame files but {gt_path} gives {label} "
                             f"{video['_T']} frames")
    return [os.path.join(folder, f) for f in files]


def _check_frame_size(path: str, height: int, width: int, label: str, gt_path: str) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as e:
        raise EvalInputError(f"cannot read frame {path}: {e}") from None
    if (h, w) != (height, width):
        raise EvalInputError(f"frame {path} is {h}x{w} (HxW) but {gt_path} says {height}x{width} for {label}")
