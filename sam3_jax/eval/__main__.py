"""`evaluate.py` (also `python -m sam3_jax.eval`): score saved predictions, or run the image or video
predictor over a set and score it.

    evaluate.py --predictions preds.json --gt gold_a.json [--gt gold_b.json --gt gold_c.json] --out OUT/
    evaluate.py --predictions veval_preds.json --gt veval_gt.json --out OUT/          # video: cgF1 + pHOTA
    evaluate.py --checkpoint CONVERTED/ --gt gt.json --images IMAGE_DIR/ --out OUT/   # predict, then score
    evaluate.py --checkpoint CONVERTED/ --gt veval_gt.json --videos FRAME_ROOT/ --out OUT/   # video

Image ground truth is SA-Co/Gold-style JSON (one `images[]` entry per image-phrase pair; several
files = several annotators, scored best-of like the official oracle); video ground truth is
SA-Co/VEval JSON (recognised by its `videos` list). Prints a table and, with --out, writes
OUT/report.json (every metric under the official key names, per-threshold curves, counts) and
OUT/report.png (F1 per IoU threshold, score histogram); in checkpoint mode also
OUT/predictions.json in the official results format. Exit status 1 on bad input.

Video checkpoint mode prompts `Sam3VideoPredictor` (the checkpoint must hold the tracker) with every
video-phrase pair of the GT (`video_np_pairs`, positives and negatives) on frame 0 and propagates
forward; a video's frames are its GT `file_names` under --videos (SA-Co/VEval: the JPEGImages
folder), else the images of --videos/<video_name>. `python -m sam3_jax.data --out DIR` writes a
synthetic set of this kind (DIR/veval_gt.json, DIR/videos).

An entry module: checkpoint mode runs the predictor (`sam3_jax.predict`), which the evaluation
package itself never imports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any, Iterator, Optional, Sequence

from absl import app, flags, logging

from sam3_jax.eval.input_checks import EvalInputError
from sam3_jax.eval.score_sets import evaluate_image_set, evaluate_video_set, gt_boxes_normalized, load_gt

_PRED = flags.DEFINE_string("predictions", None, "Predictions JSON in the official results format.")
_GT = flags.DEFINE_multi_string("gt", [], "Ground-truth JSON; repeat (or comma-separate) for several annotators.")
_CKPT = flags.DEFINE_string("checkpoint", None,
                            "Converted checkpoint directory: predict with Sam3ImagePredictor (image GT) or "
                            "Sam3VideoPredictor (video GT; the checkpoint needs the tracker) first.")
_IMAGES = flags.DEFINE_string("images", None, "Image root for --checkpoint (GT `file_name`s are relative to it).")
_VIDEOS = flags.DEFINE_string("videos", None, "Frame root for --checkpoint with video GT: the GT's `file_names` are "
                              "relative to it (else one folder of frames per `video_name`).")
_OUT = flags.DEFINE_string("out", None, "Output directory for report.json, report.png (and predictions.json).")
_IOU = flags.DEFINE_list("iou_types", ["segm", "bbox"], "IoU types to score: segm, bbox.")
_COCO = flags.DEFINE_bool("coco_ap", True, "Also report COCO AP (pycocotools) for image sets.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Text prompts per predict_batch call (checkpoint mode).")
_THR = flags.DEFINE_float("score_threshold", 0.3, "Keep predicted queries with score above this when dumping "
                          "(checkpoint mode; cgF1 itself uses >= 0.5, the official eval configs dump at 0.3).")
_BOXES = flags.DEFINE_enum("box_format", "auto", ["auto", "normalized", "pixels"],
                           "Box convention of written predictions: 'auto' follows the GT (normalised xywh when "
                           "every GT box lies in [0, 1], as in SA-Co/Gold).")
_STRICT = flags.DEFINE_bool("strict_masks", False,
                            "Decode every mask's runs with numpy and check they cover exactly height x width pixels, "
                            "and compute mask IoU from the runs (slower). By default RLE strings and sizes are checked "
                            "and IoU comes from pycocotools, as in the official scorer.")
_MAX_OBJECTS = flags.DEFINE_integer("max_objects", 16, "Video checkpoint mode: object slots of the video state.")
_DET_THRESHOLD = flags.DEFINE_float("detection_threshold", 0.5,
                                    "Video checkpoint mode: detection probability threshold (official 0.5).")
_NEW_THRESHOLD = flags.DEFINE_float("new_track_threshold", 0.7,
                                    "Video checkpoint mode: score a detection needs to start a track (official 0.7).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar in checkpoint mode.")


# --------------------------------------------------------------------------------------------- paths
def _split_paths(paths: Sequence[str]) -> list[str]:
    out = []
    for p in paths:
        out += [q for q in p.split(",") if q]
    return out


# --------------------------------------------------------------------------------------------- prediction
def predict_image_set(checkpoint: str, gt_path: str, images_dir: str, *, batch_size: int = 16,
                      score_threshold: float = 0.3, box_format: str = "auto", progress: bool = True,
                      gt: Any = None) -> list[dict]:
    """Runs Sam3ImagePredictor over the exhaustive pairs of a GT file: each image is encoded once and
    its phrases are prompted in batches. Returns official result records."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from sam3_jax.eval.image_inputs import load_image_gt
    from sam3_jax.eval.prediction_writers import image_prediction_records
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    if gt is None:
        gt = load_image_gt([gt_path])[0]
    if not os.path.isdir(images_dir):
        raise EvalInputError(f"image directory not found: {images_dir}")
    if batch_size < 1:
        raise EvalInputError(f"--batch_size must be >= 1, got {batch_size}")
    by_file: "OrderedDict[str, list]" = OrderedDict()
    for iid in gt.image_ids:
        if not gt.exhaustive(iid):
            continue
        im = gt.images[iid]
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise EvalInputError(f"{gt.path}: image id {iid!r} has no 'file_name'")
        text = im.get("text_input")
        if not isinstance(text, str) or not text.strip():
            raise EvalInputError(f"{gt.path}: image id {iid!r} has no 'text_input' phrase")
        by_file.setdefault(im["file_name"], []).append(iid)
    normalize = gt_boxes_normalized(gt) if box_format == "auto" else box_format == "normalized"
    for fn in by_file:
        p = os.path.join(images_dir, fn)
        if not os.path.isfile(p):
            raise EvalInputError(f"image file not found: {p} (file_name {fn!r} of {gt.path})")
    if not os.path.isdir(checkpoint):
        raise EvalInputError(f"checkpoint directory not found: {checkpoint}")
    predictor = Sam3ImagePredictor.from_checkpoint(checkpoint)
    records: list[dict] = []
    total = sum(len(v) for v in by_file.values())
    with tqdm(total=total, unit="pair", disable=not progress, desc="predict", file=sys.stderr) as bar:
        for fn, ids in by_file.items():
            path = os.path.join(images_dir, fn)
            try:
                image = np.asarray(Image.open(path).convert("RGB"))
            except OSError as e:
                raise EvalInputError(f"cannot read image {path}: {e}") from None
            h, w = image.shape[:2]
            for iid in ids:
                if gt.hw(iid) != (h, w):
                    raise EvalInputError(
                        f"image {path} is {h}x{w} (HxW) but {gt.path} says {gt.hw(iid)} for id {iid!r}")
            predictor.set_image(image)
            for k in range(0, len(ids), batch_size):
                chunk = ids[k:k + batch_size]
                outs = predictor.predict_batch([gt.images[i]["text_input"] for i in chunk], threshold=score_threshold)
                for iid, out in zip(chunk, outs):
                    records += image_prediction_records(iid, out["masks"], out["boxes"], out["scores"], h, w,
                                                        normalize_boxes=normalize)
                bar.update(len(chunk))
    return records


@contextlib.contextmanager
def _frame_folder(paths: Sequence[str]) -> Iterator[str]:
    """A folder whose image files, in name order, are exactly `paths` (what the video predictor
    reads): their own folder when it holds just those, else a temporary folder of links to them."""
    from sam3_jax.eval.video_inputs import FRAME_EXTENSIONS

    folder = os.path.dirname(paths[0])
    listed = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(FRAME_EXTENSIONS))
    if listed == list(paths):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="sam3_jax_frames_") as tmp:
        for t, p in enumerate(paths):  # the predictor reads by content: any name with an image extension
            link = os.path.join(tmp, f"{t:06d}.png")
            try:
                os.symlink(os.path.abspath(p), link)
            except OSError:  # no symlinks here: a copy
                shutil.copyfile(p, link)
        yield tmp


def predict_video_set(checkpoint: str, gt_path: str, videos_dir: str, *, max_objects: int = 16,
                      detection_threshold: float = 0.5, new_track_threshold: float = 0.7, progress: bool = True,
                      gt: Any = None) -> list[dict]:
    """Runs Sam3VideoPredictor over the video-phrase pairs of a VEval-style GT file: each video's
    session is opened once, each of its phrases prompted on frame 0 and propagated forward. Returns
    official video result records (one per predicted track, boxes in pixels)."""
    import dataclasses

    import numpy as np
    from tqdm import tqdm

    from sam3_jax.eval.prediction_writers import VideoTrackWriter
    from sam3_jax.eval.video_inputs import load_video_gt, video_frame_paths, video_prompts
    from sam3_jax.model.video.merge import MergeConfig
    from sam3_jax.model.video.step import VideoConfig
    from sam3_jax.predict.video import Sam3VideoPredictor

    if gt is None:
        gt = load_video_gt(gt_path)
    if max_objects < 1:
        raise EvalInputError(f"--max_objects must be >= 1, got {max_objects}")
    by_video: "OrderedDict[int, list]" = OrderedDict()
    for vid, cid, text in video_prompts(gt):
        by_video.setdefault(vid, []).append((cid, text))
    frames = video_frame_paths(gt, videos_dir, list(by_video))
    if not os.path.isdir(checkpoint):
        raise EvalInputError(f"checkpoint directory not found: {checkpoint}")
    merge = dataclasses.replace(MergeConfig(), score_threshold_detection=detection_threshold,
                                new_det_thresh=new_track_threshold)
    vcfg = dataclasses.replace(VideoConfig(), max_objects=max_objects, merge=merge)
    try:
        predictor = Sam3VideoPredictor.from_checkpoint(checkpoint, vcfg)
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    records: list[dict] = []
    total = sum(len(frames[v]) * len(ps) for v, ps in by_video.items())
    with tqdm(total=total, unit="frame", disable=not progress, desc="predict", file=sys.stderr) as bar:
        for vid, phrases in by_video.items():
            T, h, w = len(frames[vid]), gt.videos[vid]["height"], gt.videos[vid]["width"]
            scale = np.array([w, h, w, h], np.float32)  # video_frame_paths checked the frame size
            with _frame_folder(frames[vid]) as folder:
                try:
                    predictor.start_session(folder, cache_outputs=False)
                    if predictor.num_frames != T:
                        raise ValueError(f"the predictor read {predictor.num_frames} frames from {folder}, "
                                         f"the GT lists {T}")
                    for cid, text in phrases:
                        writer = VideoTrackWriter(vid, cid, T)
                        predictor.add_prompt(0, text)  # frame 0 comes again from propagate
                        for f, out in predictor.propagate("forward"):
                            writer.add_frame(f, out["obj_ids"], out["scores"], out["masks"], out["boxes_xywh"] * scale)
                            bar.update(1)
                        records += writer.records()
                except (ValueError, OSError) as e:  # an unreadable frame, frames of different sizes
                    raise EvalInputError(f"video id {vid} ({os.path.dirname(frames[vid][0])}): {e}") from None
    return records


# --------------------------------------------------------------------------------------------- CLI
def write_outputs(report: dict, out_dir: Optional[str]) -> None:
    from sam3_jax.eval.report import format_table, save_figure, write_json

    print(format_table(report))
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    scores = report.pop("scores", [])
    title = f"{report['task']}: {os.path.basename(report['inputs']['predictions'])}"
    report["figure_backend"] = save_figure(os.path.join(out_dir, "report.png"), report, scores, title=title)
    write_json(os.path.join(out_dir, "report.json"), report)
    print(f"wrote {os.path.join(out_dir, 'report.json')} and {os.path.join(out_dir, 'report.png')}")


def _predict_video_then_score(gt_path: str, gt: Any) -> dict:
    from sam3_jax.eval.prediction_writers import write_predictions

    t0 = time.time()
    records = predict_video_set(_CKPT.value, gt_path, _VIDEOS.value, max_objects=_MAX_OBJECTS.value,
                                detection_threshold=_DET_THRESHOLD.value, new_track_threshold=_NEW_THRESHOLD.value,
                                progress=_PROGRESS.value, gt=gt)
    preds = os.path.join(_OUT.value, "predictions.json")
    write_predictions(preds, records)
    print(f"wrote {len(records)} predicted tracks to {preds} ({time.time() - t0:.1f} s)")
    report = evaluate_video_set(gt_path, preds, _IOU.value, gt=gt)
    report["inputs"].update(checkpoint=_CKPT.value, videos=_VIDEOS.value, max_objects=_MAX_OBJECTS.value,
                            detection_threshold=_DET_THRESHOLD.value, new_track_threshold=_NEW_THRESHOLD.value)
    return report


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    gt_paths = _split_paths(_GT.value)
    if not gt_paths:
        raise app.UsageError("--gt is required")
    if bool(_PRED.value) == bool(_CKPT.value):
        raise app.UsageError("give exactly one of --predictions (score a file) or --checkpoint (predict, then score)")
    if _CKPT.value and not (_IMAGES.value or _VIDEOS.value):
        raise app.UsageError("--checkpoint needs --images (the image directory) or, for video ground truth, "
                             "--videos (the frame root)")
    if _CKPT.value and not _OUT.value:
        raise app.UsageError("--checkpoint needs --out (where predictions.json is written)")
    try:
        task, gt = load_gt(gt_paths)
        if task == "video":
            if _CKPT.value:
                if not _VIDEOS.value:
                    raise EvalInputError(f"{gt_paths[0]} is video ground truth: --checkpoint needs --videos "
                                         "(the frame root), not --images")
                report = _predict_video_then_score(gt_paths[0], gt)
            else:
                report = evaluate_video_set(gt_paths[0], _PRED.value, _IOU.value, gt=gt)
        else:
            if _CKPT.value and not _IMAGES.value:
                raise EvalInputError(f"{gt_paths[0]} is image ground truth: --checkpoint needs --images "
                                     "(the image directory), not --videos")
            preds = _PRED.value
            if _CKPT.value:
                from sam3_jax.eval.prediction_writers import write_predictions

                t0 = time.time()
                records = predict_image_set(_CKPT.value, gt_paths[0], _IMAGES.value, batch_size=_BATCH.value,
                                            score_threshold=_THR.value, box_format=_BOXES.value,
                                            progress=_PROGRESS.value, gt=gt[0])
                preds = os.path.join(_OUT.value, "predictions.json")
                write_predictions(preds, records)
                print(f"wrote {len(records)} predictions to {preds} ({time.time() - t0:.1f} s)")
            report = evaluate_image_set(gt_paths, preds, _IOU.value, coco=_COCO.value, strict_masks=_STRICT.value,
                                        gts=gt)
            if _CKPT.value:
                report["inputs"].update(checkpoint=_CKPT.value, images=_IMAGES.value, score_threshold=_THR.value)
        write_outputs(report, _OUT.value)
    except (EvalInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
