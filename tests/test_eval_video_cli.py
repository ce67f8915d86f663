"""The synthetic video evaluation set (`python -m sam3_jax.data`: frames + SA-Co/VEval GT) and
`evaluate.py --checkpoint --videos` on it: a tiny random-weight checkpoint with the tracker predicts
every video-phrase pair, predictions.json and report.json come out with video cgF1 / pHOTA; the
frame lookup (file_names, video_name folders), the per-frame track writer, and clear errors for a
missing folder or frame."""

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

from sam3_jax.eval import EvalInputError

FRAMES, SIZE = 6, 224
# seed 1, test split: clip 0 asks for an absent concept, clip 1 for one with two masklets
SET_ARGS = ["--split", "test", "--seed", "1", "--num_videos", "2", "--frames", str(FRAMES), "--size", str(SIZE)]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")


def _run(repo_root, python, *args, timeout=300):
    return subprocess.run([python, *args], cwd=repo_root, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def video_set(tmp_path_factory, repo_root, python):
    """DIR with videos/ and veval_gt.json, written by the CLI."""
    d = tmp_path_factory.mktemp("vset")
    r = _run(repo_root, python, "-m", "sam3_jax.data", "--out", str(d), *SET_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 2 clips" in r.stdout and "1 positive" in r.stdout
    return d


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory, tiny_cfg):
    """A converted-checkpoint directory (manifest + Orbax params, tracker included) of the tiny
    config with random weights drawn with numpy (no model run, no torch): norms 1, biases 0,
    everything else normal(0, 0.02)."""
    import jax

    from sam3_jax.convert.checkpoint import config_to_json, save_converted
    from sam3_jax.model.sam3_image import image_model_target_shapes
    from sam3_jax.model.tracker.tracker import tracker_target_shapes

    rng = np.random.default_rng(0)
    shapes = image_model_target_shapes(tiny_cfg)
    shapes["tracker"] = tracker_target_shapes(tiny_cfg)

    def draw(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(s.shape, np.float32)
        if name == "bias":
            return np.zeros(s.shape, np.float32)
        return (0.02 * rng.standard_normal(s.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    out = tmp_path_factory.mktemp("ckpt") / "converted"
    manifest = {"format_version": 1, "model_config": config_to_json(tiny_cfg), "dtype": "float32",
                "not_converted": {}, "tracker": True, "source": {"path": "numpy random draw"}}
    save_converted(str(out), params, manifest)
    return str(out)


def test_writer_cli_gives_frames_and_gt_that_load(video_set, repo_root, python, tmp_path):
    from PIL import Image

    from sam3_jax.eval.score_sets import load_gt
    from sam3_jax.eval.video_inputs import video_frame_paths, video_prompts

    task, gt = load_gt([str(video_set / "veval_gt.json")])
    assert task == "video" and len(gt.videos) == 2 and all(gt.num_frames(v) == FRAMES for v in gt.videos)
    prompts = video_prompts(gt)
    assert [(v, c) for v, c, _ in prompts] == gt.np_pairs and all(t for _, _, t in prompts)
    frames = video_frame_paths(gt, str(video_set / "videos"))
    for vid, paths in frames.items():
        assert len(paths) == FRAMES and all(os.path.isfile(p) for p in paths)
        assert os.path.basename(os.path.dirname(paths[0])) == gt.videos[vid]["video_name"]
        assert Image.open(paths[0]).size == (SIZE, SIZE)
    assert {a["video_id"] for a in gt.anns} == {2} and len(gt.anns) == 2  # clip 1 (video id 2) is the positive
    # the written frames are the source's, pixel for pixel
    from sam3_jax.data.synthetic_video import SyntheticVideoSource

    src = SyntheticVideoSource("test", seed=1, num_frames=FRAMES, canvas=SIZE, max_objects=4)
    np.testing.assert_array_equal(np.asarray(Image.open(frames[2][3])), src[1]["frames"][3])
    # an existing set is not overwritten by accident
    r = _run(repo_root, python, "-m", "sam3_jax.data", "--out", str(video_set), *SET_ARGS)
    assert r.returncode == 1 and "--overwrite" in r.stderr
    # JPEG frames (in-process: the source's own writer)
    gt_jpg = src.veval_gt([0], frame_dir=str(tmp_path), frame_format="jpg")
    first = gt_jpg["videos"][0]["file_names"][0]
    assert first.endswith(".jpg") and (tmp_path / first).is_file()
    with pytest.raises(ValueError, match="frame_format"):
        src.veval_gt([0], frame_format="gif")


def test_frame_lookup_by_video_name_and_bad_frames(video_set, tmp_path):
    from PIL import Image

    from sam3_jax.eval.video_inputs import validate_video_gt, video_frame_paths

    raw = json.loads((video_set / "veval_gt.json").read_text())
    for v in raw["videos"]:  # no file_names: the folder named by video_name, `length` frames
        del v["file_names"]
    gt = validate_video_gt(raw, "no_file_names")
    frames = video_frame_paths(gt, str(video_set / "videos"))
    assert [os.path.basename(p) for p in frames[1]] == [f"{t:03d}.png" for t in range(FRAMES)]
    root = tmp_path / "videos"
    shutil.copytree(video_set / "videos", root)
    Image.new("RGB", (8, 8)).save(root / "test_000000" / "extra.png")
    with pytest.raises(EvalInputError, match="holds 7 frame files"):
        video_frame_paths(gt, str(root))
    os.remove(root / "test_000000" / "extra.png")
    Image.new("RGB", (SIZE + 2, SIZE)).save(root / "test_000000" / "000.png")
    with pytest.raises(EvalInputError, match=r"is 224x226 \(HxW\)"):
        video_frame_paths(gt, str(root))
    with pytest.raises(EvalInputError, match="video directory not found"):
        video_frame_paths(gt, str(tmp_path / "nowhere"))


def test_track_writer_matches_the_record_writer():
    from sam3_jax.eval.prediction_writers import VideoTrackWriter, video_prediction_record

    rng = np.random.default_rng(0)
    T, H, W = 4, 9, 11
    masks = {7: rng.random((T, H, W)) > 0.6, 3: np.zeros((T, H, W), bool)}
    masks[3][1, 2:5, 3:6] = True
    w = VideoTrackWriter(5, 2, T)
    for t in range(T):
        ids = [i for i in (7, 3) if t != 2 or i == 7]  # object 3 is not reported on frame 2
        w.add_frame(t, ids, [0.9 if i == 7 else 0.4 for i in ids], np.stack([masks[i][t] for i in ids]))
    recs = w.records()
    assert [r["score"] for r in recs] == [0.4, 0.9]  # id order
    assert recs[1] == video_prediction_record(5, 2, 0.9, masks[7])
    assert recs[0] == video_prediction_record(5, 2, 0.4, masks[3])
    assert recs[0]["segmentations"][0] is None and recs[0]["bboxes"][1] == [3.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="out of range"):
        w.add_frame(T, [], [], np.zeros((0, H, W), bool))


def test_checkpoint_mode_predicts_videos_then_scores(video_set, random_checkpoint, repo_root, python, tmp_path):
    from sam3_jax.eval.score_sets import evaluate_video_set

    root = tmp_path / "videos"
    shutil.copytree(video_set / "videos", root)
    # a stray image in one folder: that video's frames are then read through a folder of links
    shutil.copy(root / "test_000000" / "000.png", root / "test_000000" / "thumbnail.png")
    gt_path = str(video_set / "veval_gt.json")
    out = tmp_path / "out"
    # thresholds 0: random weights then create tracks (not required: the test checks the plumbing)
    r = _run(repo_root, python, "evaluate.py", "--checkpoint", random_checkpoint, "--gt", gt_path, "--videos",
             str(root), "--out", str(out), "--detection_threshold", "0", "--new_track_threshold", "0",
             "--max_objects", "4", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "predicted tracks" in r.stdout and "pHOTA" in r.stdout and "predict" in r.stderr
    gt = json.loads(open(gt_path).read())
    pairs = {(p["video_id"], p["category_id"]) for p in gt["video_np_pairs"]}
    preds = json.loads((out / "predictions.json").read_text())
    assert all((p["video_id"], p["category_id"]) in pairs for p in preds)
    assert all(len(p[k]) == FRAMES for p in preds for k in ("segmentations", "bboxes", "areas"))
    assert all(0 <= p["score"] <= 1 for p in preds)
    assert all(s is None or s["size"] == [SIZE, SIZE] for p in preds for s in p["segmentations"])
    rep = json.loads((out / "report.json").read_text())
    assert rep["task"] == "video" and rep["inputs"]["checkpoint"] == random_checkpoint
    assert rep["inputs"]["videos"] == str(root) and rep["num_predictions"] == len(preds)
    m = rep["results"]["metrics"]
    for tag in ("mask", "bbox"):
        for key in (f"video_{tag}_demo_cgf1_micro_50_95", f"video_{tag}_demo_ilmcc_50_95",
                    f"video_{tag}_demo_positive_micro_f1_50_95", f"video_{tag}_all_phrase_HOTA",
                    f"video_{tag}_all_phrase_DetA", f"video_{tag}_all_phrase_AssA"):
            assert math.isfinite(m[key]) and 0 <= m[key] <= 1, (key, m[key])
    assert (out / "report.png").is_file()
    ref = evaluate_video_set(gt_path, str(out / "predictions.json"))
    for k, v in ref["results"]["metrics"].items():  # report.json writes an undefined metric (NaN) as null
        assert m[k] == (None if v is None or math.isnan(v) else pytest.approx(v, abs=1e-12)), k


def test_missing_video_folder_or_frame_is_a_clear_error(video_set, random_checkpoint, repo_root, python, tmp_path):
    root = tmp_path / "videos"
    shutil.copytree(video_set / "videos", root)
    gt_path = str(video_set / "veval_gt.json")
    args = ["evaluate.py", "--checkpoint", random_checkpoint, "--gt", gt_path, "--out", str(tmp_path / "out")]
    os.remove(root / "test_000001" / "004.png")
    r = _run(repo_root, python, *args, "--videos", str(root))
    assert r.returncode == 1 and "frame file not found" in r.stderr and "test_000001/004.png" in r.stderr
    shutil.rmtree(root / "test_000001")
    r = _run(repo_root, python, *args, "--videos", str(root))
    assert r.returncode == 1 and "video folder not found" in r.stderr and str(root / "test_000001") in r.stderr
    r = _run(repo_root, python, *args, "--images", str(root))
    assert r.returncode == 1 and "needs --videos" in r.stderr
    assert not (tmp_path / "out" / "predictions.json").exists()
