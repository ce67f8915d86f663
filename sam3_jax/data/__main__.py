"""`python -m sam3_jax.data`: write the synthetic video evaluation set (no download).

    python -m sam3_jax.data --out DIR [--split test] [--num_videos 4] [--frames 12] [--size 224] \
        [--seed 0] [--max_objects 4] [--frame_format png|jpg] [--overwrite]

Draws clips 0 .. num_videos - 1 of `SyntheticVideoSource(split, seed)` (moving objects, one noun
phrase per clip, positive or negative) and writes DIR/videos/<video_name>/000.png ... (one folder of
frames per clip) and DIR/veval_gt.json (SA-Co/VEval format: `videos` with `file_names` relative to
DIR/videos, masklet `annotations`, `categories`, `video_np_pairs`), ready for

    evaluate.py --checkpoint CONVERTED/ --gt DIR/veval_gt.json --videos DIR/videos --out OUT/

Exit status 1 on bad input (or when DIR already holds a set and --overwrite is not given).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import app, flags, logging

from sam3_jax.data.synthetic import SPLITS
from sam3_jax.data.synthetic_video import FRAME_FORMATS, SyntheticVideoSource

GT_NAME = "veval_gt.json"
VIDEOS_NAME = "videos"

_OUT = flags.DEFINE_string("out", None, f"Output directory: {VIDEOS_NAME}/ (frames) and {GT_NAME}.")
_SPLIT = flags.DEFINE_enum("split", "test", sorted(SPLITS), "Split of the synthetic source.")
_NUM = flags.DEFINE_integer("num_videos", 4, "Clips to write (indices 0 .. num_videos - 1 of the split).")
_FRAMES = flags.DEFINE_integer("frames", 12, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", 224, "Frame side in pixels (square frames).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic source.")
_MAX_OBJ = flags.DEFINE_integer("max_objects", 4, "Most objects per clip.")
_MIN_OBJ = flags.DEFINE_integer("min_objects", 2, "Fewest objects per clip.")
_FORMAT = flags.DEFINE_enum("frame_format", "png", list(FRAME_FORMATS), "Image format of the frames.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, f"Replace an existing {VIDEOS_NAME}/ and {GT_NAME} in --out.")


def write_video_set(out_dir: str, source: SyntheticVideoSource, num_videos: int, *, frame_format: str = "png",
                    overwrite: bool = False) -> tuple[str, dict]:
    """Writes clips 0 .. num_videos - 1 of `source` as out_dir/videos/<video_name>/ frames plus
    out_dir/veval_gt.json; returns (GT path, GT dict). FileExistsError when a set is there already (unless
    `overwrite`, which removes the old frames first)."""
    if not 1 <= num_videos <= len(source):
        raise ValueError(f"--num_videos must be in [1, {len(source)}] for {source!r}, got {num_videos}")
    gt_path = os.path.join(out_dir, GT_NAME)
    videos = os.path.join(out_dir, VIDEOS_NAME)
    if os.path.exists(gt_path) or os.path.exists(videos):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds {GT_NAME} or {VIDEOS_NAME}/ (pass --overwrite to replace)")
        shutil.rmtree(videos, ignore_errors=True)
    os.makedirs(videos, exist_ok=True)
    gt = source.veval_gt(range(num_videos), frame_dir=videos, frame_format=frame_format)
    tmp = gt_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(gt, f)
    os.replace(tmp, gt_path)
    return gt_path, gt


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if not _OUT.value:
        raise app.UsageError("--out is required")
    try:
        source = SyntheticVideoSource(_SPLIT.value, seed=_SEED.value, num_frames=_FRAMES.value, canvas=_SIZE.value,
                                      max_objects=_MAX_OBJ.value, min_objects=_MIN_OBJ.value)
        gt_path, gt = write_video_set(_OUT.value, source, _NUM.value, frame_format=_FORMAT.value,
                                  overwrite=_OVERWRITE.value)
    except (ValueError, FileExistsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    pos = sum(1 for p in gt["video_np_pairs"] if p["num_masklets"] > 0)
    print(f"wrote {len(gt['videos'])} clips of {_FRAMES.value} frames ({_SIZE.value} px) to "
          f"{os.path.join(_OUT.value, VIDEOS_NAME)} and {gt_path}: {len(gt['video_np_pairs'])} video-phrase pairs "
          f"({pos} positive), {len(gt['annotations'])} masklets")
    return 0


if __name__ == "__main__":
    app.run(main)
