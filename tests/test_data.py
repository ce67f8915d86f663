"""The data package: synthetic source, COCO / SA-Co sources, bad data, TFDS round trip, Grain pipeline."""

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from sam3_jax.data import coco as dcoco
from sam3_jax.data import saco as dsaco
from sam3_jax.data import pipeline as dp
from sam3_jax.data import transforms as dt
from sam3_jax.data.synthetic import COLOURS, SHAPES, SIZES, SyntheticSource, box_from_mask
from sam3_jax.data.synthetic_video import SyntheticVideoSource


def _concept(text):
    words = text.split()
    size = SIZES.index(words[0]) if words[0] in SIZES else None
    colour = next((COLOURS.index(w) for w in words if w in COLOURS), None)
    shape = SHAPES.index(words[-1]) if words[-1] in SHAPES else None
    return size, colour, shape


def _matches(obj, concept):
    return all(c is None or c == o for o, c in zip(obj, concept))


def _assert_examples_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k


# --------------------------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_picklable():
    s = SyntheticSource("train", seed=3)
    s2 = pickle.loads(pickle.dumps(s))
    for i in (0, 7, 123456):
        _assert_examples_equal(s[i], s2[i])
        _assert_examples_equal(s[i], SyntheticSource("train", seed=3)[i])
    assert not np.array_equal(s[5]["image"], SyntheticSource("train", seed=4)[5]["image"])
    assert not np.array_equal(s[5]["image"], SyntheticSource("val", seed=3)[5]["image"])
    assert "SyntheticSource" in repr(s) and len(SyntheticSource("val")) == 512 and len(SyntheticSource("test")) == 1024
    with pytest.raises(IndexError):
        SyntheticSource("val")[512]
    v = SyntheticVideoSource("val", num_frames=6)
    _assert_examples_equal(v[3], pickle.loads(pickle.dumps(v))[3])


def test_synthetic_example_format():
    s = SyntheticSource("val", canvas=48, max_instances=7, max_prompt_boxes=3)
    ex = s[0]
    assert ex["image"].shape == (48, 48, 3) and ex["image"].dtype == np.uint8
    assert ex["boxes"].shape == (7, 4) and ex["boxes"].dtype == np.float32
    assert ex["masks"].shape == (7, 48, 48) and ex["masks"].dtype == bool
    assert ex["prompt_boxes"].shape == (3, 4) and ex["prompt_labels"].dtype == np.int32
    assert ex["prompt_mask"].dtype == bool and ex["valid"].shape == (7,)
    assert isinstance(ex["text"], str)


def test_synthetic_semantics():
    """GT = every object matching the phrase; negatives really absent; boxes = mask boxes; masks carry the
    phrase's colour; visual queries have one positive exemplar on a GT instance; real instances first."""
    s = SyntheticSource("val")
    kinds = set()
    for i in range(300):
        ex = s[i]
        concept = _concept(ex["concept"])
        objs = [o for o in ex["objects"] if o[0] >= 0]
        n_match = sum(_matches(o, concept) for o in objs)
        k = int(ex["num_instances"])
        assert k == n_match == ex["valid"].sum(), (i, ex["concept"])
        assert ex["valid"][:k].all() and not ex["valid"][k:].any() and not ex["masks"][k:].any()
        kinds.add((int(ex["query_type"]), int(ex["negative_kind"])))
        if k == 0:
            assert ex["negative_kind"] in (1, 2)
            present = [{o[a] for o in objs} for a in range(3)]
            all_there = all(c is None or c in present[a] for a, c in enumerate(concept))
            assert all_there == (ex["negative_kind"] == 1)
        for j in range(k):
            m = ex["masks"][j]
            assert m.sum() >= 12
            np.testing.assert_array_equal(ex["boxes"][j], box_from_mask(m))
            if concept[1] is not None:
                mean = ex["image"][m].astype(float).mean(0)
                assert np.abs(mean - dcoco_palette(concept[1])).max() < 45, (i, ex["concept"], mean)
        if ex["query_type"] == 2:
            assert ex["text"] == "visual" and (~ex["prompt_mask"]).sum() == 1 and ex["prompt_labels"][0] == 1
            assert any(np.allclose(ex["prompt_boxes"][0], ex["boxes"][j]) for j in range(k))
        elif ex["query_type"] == 1:
            for b, lab in zip(ex["prompt_boxes"][~ex["prompt_mask"]], ex["prompt_labels"][~ex["prompt_mask"]]):
                assert any(np.allclose(b, ex["boxes"][j]) for j in range(k)) == (lab == 1)
    assert {(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)} <= kinds


def dcoco_palette(colour):
    from sam3_jax.data.synthetic import _RGB

    return _RGB[colour]


def test_held_out_never_a_train_phrase():
    held = {(COLOURS.index(c), SHAPES.index(sh)) for c, sh in SyntheticSource("train").held_out}
    train = SyntheticSource("train", seed=1)
    seen_held_objects = 0
    for i in range(1500):
        ex = train[i]
        _, colour, shape = _concept(ex["concept"])
        assert (colour, shape) not in held, (i, ex["concept"])
        assert not ex["held_out"]
        seen_held_objects += sum((o[1], o[2]) in held for o in ex["objects"] if o[0] >= 0)
    assert seen_held_objects > 0  # the objects themselves do appear in training images
    val = [SyntheticSource("val")[i] for i in range(200)]
    pos_held = [ex for ex in val if ex["held_out"] and ex["num_instances"] > 0]
    neg_held = [ex for ex in val if ex["held_out"] and ex["num_instances"] == 0]
    assert len(pos_held) >= 10 and len(neg_held) >= 5
    for ex in pos_held + neg_held:
        assert _concept(ex["concept"])[1:] in held


def test_synthetic_palette_shape_and_size_options():
    """A smaller palette / shape set and no size words: objects and phrases stay inside them, held-out
    combinations are still never train phrases, and bad options are refused up front."""
    kw = dict(colours=("red", "green", "blue", "yellow"), shapes=("circle", "square", "triangle"),
              held_out=(("blue", "triangle"), ("yellow", "square")), size_words=False)
    train = SyntheticSource("train", seed=2, **kw)
    held = {(COLOURS.index(c), SHAPES.index(sh)) for c, sh in kw["held_out"]}
    colours = {COLOURS.index(c) for c in kw["colours"]}
    shapes = {SHAPES.index(x) for x in kw["shapes"]}
    for i in range(400):
        ex = train[i]
        objs = [o for o in ex["objects"] if o[0] >= 0]
        assert all(o[1] in colours and o[2] in shapes for o in objs), i
        size, colour, shape = _concept(ex["concept"])
        assert size is None and not any(w in ex["text"].split() for w in SIZES), ex["text"]
        assert colour is None or colour in colours
        assert shape is None or shape in shapes
        assert (colour, shape) not in held
    test = [SyntheticSource("test", held_out_rate=1.0, **kw)[i] for i in range(40)]
    assert all(ex["held_out"] and _concept(ex["concept"])[1:] in held for ex in test)
    with pytest.raises(ValueError, match="not a .colour, shape. pair"):
        SyntheticSource("train", colours=("red", "green"))  # the default held-out pairs need other colours
    with pytest.raises(ValueError, match="colours must be distinct names"):
        SyntheticSource("train", colours=("red", "pink"), held_out=())
    with pytest.raises(ValueError, match="nothing is left to train on"):
        SyntheticSource("train", colours=("red",), shapes=("circle",), held_out=(("red", "circle"),))


def test_synthetic_video():
    v = SyntheticVideoSource("val", num_frames=8, canvas=64)
    crossings = 0
    for i in range(12):
        ex = v[i]
        T, M = 8, v.max_objects
        assert ex["frames"].shape == (T, 64, 64, 3) and ex["masks"].shape == (T, M, 64, 64)
        assert np.array_equal(ex["present"], ex["masks"].any(axis=(2, 3)))
        for t in range(T):
            for k in np.flatnonzero(ex["present"][t]):
                np.testing.assert_array_equal(ex["boxes"][t, k], box_from_mask(ex["masks"][t, k]))
        assert not (ex["present"] & ~ex["obj_valid"][None]).any()
        concept = _concept(ex["text"])
        for k in range(M):
            obj = (ex["obj_size"][k], ex["obj_colour"][k], ex["obj_shape"][k])
            assert ex["matches"][k] == (ex["obj_valid"][k] and _matches(obj, concept) and ex["present"][:, k].any())
        same = (ex["obj_colour"][0] == ex["obj_colour"][1]) and (ex["obj_shape"][0] == ex["obj_shape"][1])
        crossings += bool(same)
        # objects move: some box centre changes over the clip
        both = ex["present"][0] & ex["present"][-1]
        if both.any():
            assert np.abs(ex["boxes"][0, both, :2] - ex["boxes"][-1, both, :2]).max() > 0
    assert crossings >= 2
    gt = v.veval_gt(range(4))
    from sam3_jax.eval.video_inputs import validate_video_gt

    vgt = validate_video_gt(json.loads(json.dumps(gt)), "synthetic")
    assert len(vgt.videos) == 4 and len(gt["video_np_pairs"]) == 4


# --------------------------------------------------------------------------------------------- transforms
def test_resize_matches_official_processor():
    from sam3_jax.formats.image import resize_uint8

    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in [(64, 64), (20, 30), (37, 53)]:
        np.testing.assert_array_equal(dt.resize_uint8(img, size), resize_uint8(img, size))
        fast = dt.resize_uint8_fast(img, size).astype(int)
        assert fast.shape == (*size, 3) and np.abs(fast - resize_uint8(img, size)).max() <= 2
    ex = SyntheticSource("val", canvas=64)[0]
    out = dt.transform_example(ex, 96)
    np.testing.assert_array_equal(out["image"], resize_uint8(ex["image"], (96, 96)))
    np.testing.assert_allclose(out["boxes"], ex["boxes"], atol=1e-6)


def test_augmentation_keeps_masks_boxes_and_pixels_consistent():
    src = SyntheticSource("train", canvas=64)
    aug = dt.ResizeAugment(96, 96, augment=True, hflip_prob=0.5, scale_range=(0.7, 1.4))
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(60):
        ex = src[i]
        out = aug.random_map(ex, rng)
        k = int(out["num_instances"])
        assert out["valid"][:k].all() and not out["valid"][k:].any() and not out["masks"][k:].any()
        assert k <= ex["num_instances"]
        for j in range(k):
            m = out["masks"][j]
            if m.sum() < 4:
                continue
            np.testing.assert_allclose(out["boxes"][j], box_from_mask(m), atol=2.5 / 96)
            # the mask still covers pixels of the instance's colour (image and masks moved together)
            _, colour, _ = _concept(ex["concept"])
            if colour is not None:
                mean = out["image"][m].astype(float).mean(0)
                assert np.abs(mean - dcoco_palette(colour)).max() < 60, (i, ex["concept"], mean)
                checked += 1
        pv = ~out["prompt_mask"]
        assert (out["prompt_boxes"][pv, 2:] > 0).all() and (out["prompt_boxes"][~pv] == 0).all()
        if ex["query_type"] == 2:  # a visual query keeps its exemplar
            assert pv.sum() == 1
    assert checked > 20


def test_flip_is_exact():
    ex = SyntheticSource("val", canvas=64)[3]
    out = dt.transform_example(ex, 64, window=(0, 0, 64, 64), flip=True)
    np.testing.assert_array_equal(out["image"], ex["image"][:, ::-1])
    k = int(ex["num_instances"])
    np.testing.assert_array_equal(out["masks"][:k], ex["masks"][:k, :, ::-1])
    exp = ex["boxes"][:k].copy()
    exp[:, 0] = 1 - exp[:, 0]
    np.testing.assert_allclose(out["boxes"][:k], exp, atol=1e-6)


def test_to_model_batch():
    cfg = dp.PipelineConfig(resolution=32, mask_size=16, batch_size=4, seed=0, context_length=32)
    it = dp.make_iterator(SyntheticSource("train", canvas=32), cfg, process_index=0, process_count=1)
    batch = next(it)
    assert set(batch) == set(dp.BATCH_KEYS)
    inputs, targets = dp.to_model_batch(batch)
    from sam3_jax.train.step import MODEL_INPUTS

    assert set(inputs) == set(MODEL_INPUTS)
    assert inputs["images"].shape == (4, 32, 32, 3) and inputs["images"].dtype == np.float32
    assert -1.0 <= inputs["images"].min() and inputs["images"].max() <= 1.0
    assert inputs["tokens"].shape == (4, 32) and inputs["tokens"].dtype == np.int32
    assert (inputs["tokens"][:, 0] == 49406).all()
    assert inputs["boxes"].shape == (4, 4, 4) and inputs["box_labels"].dtype == np.int32
    assert inputs["box_mask"].dtype == bool
    assert targets["boxes"].shape == (4, 8, 4) and targets["masks"].shape == (4, 8, 16, 16)
    assert targets["valid"].dtype == bool and targets["is_exhaustive"].shape == (4,)
    from sam3_jax.model.tokenizer import ClipTokenizer

    np.testing.assert_array_equal(inputs["tokens"], ClipTokenizer()(list(batch["text"])))


# --------------------------------------------------------------------------------------------- pipeline
def _epoch_ids(src, cfg, pi, pc):
    ids = []
    for b in dp.make_iterator(src, cfg, process_index=pi, process_count=pc):
        ids.extend(int(p) for p, r in zip(b["pair_id"], b["row_valid"]) if r)
    return ids


def test_sharding_disjoint_and_covering():
    src = SyntheticSource("val", num_examples=31, canvas=32)
    cfg = dp.PipelineConfig(resolution=32, batch_size=4, num_epochs=1, augment=False, drop_remainder=False, seed=5)
    shards = [_epoch_ids(src, cfg, i, 3) for i in range(3)]
    flat = [p for s in shards for p in s]
    assert sorted(flat) == list(range(31))
    assert all(len(s) in (10, 11) for s in shards)
    # shuffled, and differently per seed
    assert shards[0] != sorted(shards[0])
    other = dp.PipelineConfig(resolution=32, batch_size=4, num_epochs=1, augment=False, drop_remainder=False, seed=6)
    assert _epoch_ids(src, other, 0, 3) != shards[0]
    # evaluation: every process yields the same number of (padded) batches
    ev = dp.PipelineConfig.for_eval(32, 4)
    counts, ids = [], []
    for i in range(3):
        bs = list(dp.make_iterator(src, ev, process_index=i, process_count=3))
        counts.append(len(bs))
        for b in bs:
            assert b["image"].shape[0] == 4
            ids.extend(int(p) for p, r in zip(b["pair_id"], b["row_valid"]) if r)
            assert (b["pair_id"][~b["row_valid"]] == -1).all() and not b["valid"][~b["row_valid"]].any()
    assert len(set(counts)) == 1 and sorted(ids) == list(range(31))


def test_epochs_reshuffle():
    src = SyntheticSource("val", num_examples=12, canvas=32)
    cfg = dp.PipelineConfig(resolution=32, batch_size=12, num_epochs=2, augment=False, seed=1)
    b1, b2 = list(dp.make_iterator(src, cfg, process_index=0, process_count=1))
    assert sorted(b1["pair_id"]) == sorted(b2["pair_id"]) == list(range(12))
    assert list(b1["pair_id"]) != list(b2["pair_id"])


def _resume_check(workers):
    src = SyntheticSource("train", canvas=32)
    cfg = dp.PipelineConfig(resolution=32, mask_size=16, batch_size=4, seed=11, worker_count=workers,
                            worker_buffer_size=1)
    it = dp.make_iterator(src, cfg, process_index=0, process_count=1)
    try:
        for _ in range(3):
            next(it)
        state = it.get_state()
        expect = [next(it) for _ in range(3)]
    finally:
        dp.close_iterator(it)
    it2 = dp.make_iterator(src, cfg, process_index=0, process_count=1, state=json.loads(json.dumps(state)))
    try:
        got = [next(it2) for _ in range(3)]
    finally:
        dp.close_iterator(it2)
    for a, b in zip(expect, got):
        _assert_examples_equal(a, b)


def test_exact_resume_in_process():
    _resume_check(0)


def test_exact_resume_with_two_workers():
    _resume_check(2)


# --------------------------------------------------------------------------------------------- COCO / SA-Co
def _poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _make_coco(tmp, images=3):
    """Tiny COCO dataset: coloured rectangles on grey, categories cat/dog/bird/car (car never present)."""
    img_dir = tmp / "images"
    img_dir.mkdir(exist_ok=True)
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "hot_dog"}, {"id": 5, "name": "bird"}, {"id": 9, "name": "car"}]
    ims, anns = [], []
    for i in range(images):
        h, w = 40 + 4 * i, 50
        arr = np.full((h, w, 3), 100, np.uint8)
        rects = [(1, (2, 3, 12, 15)), (1, (20, 5, 30, 18)), (2, (5, 22, 25, 35))]
        if i == 1:
            rects.append((5, (35, 20, 48, 30)))
        for c, (x0, y0, x1, y1) in rects:
            arr[y0:y1, x0:x1] = (50 * c, 200, 30)
        Image.fromarray(arr).save(img_dir / f"im{i}.png")
        ims.append({"id": 10 + i, "file_name": f"im{i}.png", "height": h, "width": w})
        for j, (c, (x0, y0, x1, y1)) in enumerate(rects):
            if j == 2 and i == 2:  # an uncompressed RLE
                m = np.zeros((h, w), np.uint8)
                m[y0:y1, x0:x1] = 1
                flat = m.flatten(order="F")
                change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                counts = np.diff(np.concatenate([[0], change])).tolist()
                seg = {"size": [h, w], "counts": counts}
            else:
                seg = _poly(x0, y0, x1, y1)
            anns.append({"id": 100 * i + j, "image_id": 10 + i, "category_id": c, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "segmentation": seg})
    if images > 2:  # a crowd region of "bird" in image 2: bird is neither positive nor negative there
        anns.append({"id": 999, "image_id": 12, "category_id": 5, "iscrowd": 1, "bbox": [30, 30, 10, 5],
                     "area": 50, "segmentation": _poly(30, 30, 40, 35)})
    data = {"images": ims, "annotations": anns, "categories": cats}
    path = tmp / "instances.json"
    path.write_text(json.dumps(data))
    return path, img_dir, data


def test_coco_source(tmp_path):
    path, img_dir, data = _make_coco(tmp_path)
    src = dcoco.CocoSource(str(path), str(img_dir), max_instances=4, negatives_per_image=None)
    pairs = [(int(src[i]["image_id"]), src[i]["text"], int(src[i]["num_instances"])) for i in range(len(src))]
    # image 10: cat x2, hot dog x1 positive; bird, car negative. image 12: bird crowd-only -> no pair
    assert (10, "cat", 2) in pairs and (10, "hot dog", 1) in pairs and (10, "bird", 0) in pairs
    assert (11, "bird", 1) in pairs and (10, "car", 0) in pairs
    assert not any(p[0] == 12 and p[1] == "bird" for p in pairs)
    assert len(src) == 4 + 4 + 3
    for i in range(len(src)):
        ex = src[i]
        h, w = ex["image"].shape[:2]
        assert ex["masks"].shape == (4, h, w) and ex["image"].dtype == np.uint8
        for j in range(int(ex["num_instances"])):
            np.testing.assert_allclose(ex["boxes"][j], box_from_mask(ex["masks"][j]), atol=1e-6)
            assert (ex["image"][ex["masks"][j]] == ex["image"][ex["masks"][j]][0]).all()
        assert bool(ex["is_exhaustive"])
    # negatives sampled per image, deterministically
    s1 = dcoco.CocoSource(str(path), str(img_dir), negatives_per_image=1, seed=0)
    s2 = dcoco.CocoSource(str(path), str(img_dir), negatives_per_image=1, seed=0)
    assert len(s1) == 3 + 4 + 3 and [s1[i]["text"] for i in range(len(s1))] == [s2[i]["text"] for i in range(len(s2))]
    # a pair with more instances than M keeps the largest and is not exhaustive
    s3 = dcoco.CocoSource(str(path), str(img_dir), max_instances=1)
    cat = next(s3[i] for i in range(len(s3)) if s3[i]["text"] == "cat")
    assert cat["num_instances"] == 1 and not cat["is_exhaustive"]
    # through the pipeline at another resolution
    cfg = dp.PipelineConfig.for_eval(32, 4)
    batches = list(dp.make_iterator(src, cfg, process_index=0, process_count=1))
    assert sum(int(b["row_valid"].sum()) for b in batches) == len(src)
    pickle.loads(pickle.dumps(src))


def test_saco_gold_round_trip(tmp_path):
    syn = SyntheticSource("val", canvas=32, max_instances=8)
    exs = [syn[i] for i in range(12)]
    gt = tmp_path / "gold.json"
    dsaco.write_saco_gold(exs, str(gt), image_dir=str(tmp_path / "img"))
    from sam3_jax.eval.image_inputs import load_image_gt

    assert len(load_image_gt(str(gt))[0].image_ids) == 12
    src = dsaco.SacoGoldSource(str(gt), str(tmp_path / "img"), max_instances=8)
    assert len(src) == 12
    for ex, got in zip(exs, (src[i] for i in range(12))):
        assert got["text"] == ex["text"] and int(got["pair_id"]) == int(ex["pair_id"])
        np.testing.assert_array_equal(got["image"], ex["image"])
        np.testing.assert_array_equal(got["valid"], ex["valid"])
        np.testing.assert_array_equal(got["masks"], ex["masks"])
        np.testing.assert_allclose(got["boxes"], ex["boxes"], atol=1e-6)


# --------------------------------------------------------------------------------------------- bad data
@pytest.mark.parametrize("case", ["missing image", "corrupt image", "empty annotations", "box outside",
                                  "unknown category", "empty segmentation"])
def test_bad_coco_data_raise_or_skip(tmp_path, case):
    path, img_dir, data = _make_coco(tmp_path, images=2)
    name = "im1.png"
    if case == "missing image":
        os.remove(img_dir / name)
        needle = name
    elif case == "corrupt image":
        (img_dir / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        needle = name
    elif case == "empty annotations":
        data["annotations"] = []
        needle = "empty"
    elif case == "box outside":
        data["annotations"][4]["bbox"] = [45, 20, 13, 10]
        needle = "id 101"
    elif case == "unknown category":
        data["annotations"][4]["category_id"] = 77
        needle = "77"
    else:
        data["annotations"][4]["segmentation"] = []
        needle = "id 101"
    path.write_text(json.dumps(data))

    def read_all(src):
        return [src[i] for i in range(len(src))]

    with pytest.raises(dcoco.DataError, match=needle):
        read_all(dcoco.CocoSource(str(path), str(img_dir), negatives_per_image=None))
    src = dcoco.CocoSource(str(path), str(img_dir), negatives_per_image=None, on_bad_data="skip")
    got = [e for e in read_all(src) if e is not None]
    assert sum(src.skipped.values()) >= 1
    if case == "empty annotations":
        assert len(got) == 2 * 4 and all(e["num_instances"] == 0 for e in got)
    else:
        assert {int(e["image_id"]) for e in got} == {10}  # the bad image is left out
    # the pipeline drops a skipped record instead of failing
    cfg = dp.PipelineConfig.for_eval(16, 2)
    n = sum(int(b["row_valid"].sum()) for b in dp.make_iterator(src, cfg, process_index=0, process_count=1))
    assert n == len(got)


def test_bad_saco_data(tmp_path):
    syn = SyntheticSource("val", canvas=32)
    exs = [syn[i] for i in range(6)]
    gt = tmp_path / "gold.json"
    data = dsaco.write_saco_gold(exs, str(gt), image_dir=str(tmp_path / "img"))
    a = data["annotations"][0]
    a["bbox"] = [0.9, 0.1, 0.5, 0.2]
    gt.write_text(json.dumps(data))
    bad_pair = a["image_id"]
    with pytest.raises(dcoco.DataError, match=f"id {bad_pair}"):
        dsaco.SacoGoldSource(str(gt), str(tmp_path / "img"))
    src = dsaco.SacoGoldSource(str(gt), str(tmp_path / "img"), on_bad_data="skip")
    assert len(src) == 5 and src.skipped == {"box outside the image": 1}
    # a missing image: found on building, or on reading when files are not checked up front
    dsaco.write_saco_gold(exs, str(gt))
    missing = data["images"][1]["file_name"]
    os.remove(tmp_path / "img" / missing)
    with pytest.raises(dcoco.DataError, match=missing):
        dsaco.SacoGoldSource(str(gt), str(tmp_path / "img"))
    with pytest.raises(dcoco.DataError, match=missing):
        dsaco.SacoGoldSource(str(gt), str(tmp_path / "img"), check_files=False)[1]
    lazy = dsaco.SacoGoldSource(str(gt), str(tmp_path / "img"), check_files=False, on_bad_data="skip")
    assert lazy[1] is None and lazy[2] is not None and lazy.skipped == {"unreadable image": 1}
    assert len(dsaco.SacoGoldSource(str(gt), str(tmp_path / "img"), on_bad_data="skip")) == 5
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(dcoco.DataError, match="broken.json"):
        dsaco.SacoGoldSource(str(tmp_path / "broken.json"), str(tmp_path), on_bad_data="skip")


def test_worker_error_is_reported(tmp_path):
    """A bad file in a worker process surfaces as DataError text in the main process, not a hang."""
    path, img_dir, data = _make_coco(tmp_path, images=2)
    (img_dir / "im1.png").write_bytes(b"garbage")
    src = dcoco.CocoSource(str(path), str(img_dir), negatives_per_image=None)
    cfg = dp.PipelineConfig(resolution=16, batch_size=2, num_epochs=1, shuffle=False, augment=False,
                            worker_count=1, worker_buffer_size=1, drop_remainder=False)
    it = dp.make_iterator(src, cfg, process_index=0, process_count=1)
    try:
        with pytest.raises(Exception, match="im1.png"):
            list(it)
    finally:
        dp.close_iterator(it)


# --------------------------------------------------------------------------------------------- TFDS
def test_tfds_array_record_round_trip(tmp_path):
    tb = pytest.importorskip("sam3_jax.data.tfds_builders")
    import tensorflow_datasets as tfds

    b = tb.build(tb.Sam3SyntheticPcs, str(tmp_path / "tfds"), config="canvas64", num_examples={"val": 16, "test": 4})
    src = tb.TfdsPairSource(b.data_dir, "val", max_instances=8)
    syn = SyntheticSource("val", num_examples=16)
    assert len(src) == 16
    for i in range(16):
        want = dict(syn[i])
        want.pop("objects")
        got = dict(src[i])
        assert got.pop("file_name") == ""
        _assert_examples_equal(got, want)
    assert len(tfds.data_source("sam3_synthetic_pcs/canvas64", split="test", data_dir=str(tmp_path / "tfds"))) == 4
    src2 = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(src2[3]["masks"], src[3]["masks"])
    # COCO-format files through the COCO builder
    path, img_dir, _ = _make_coco(tmp_path)
    cb = tb.build(tb.Sam3CocoPcs, str(tmp_path / "tfds"), splits={"train": (str(path), str(img_dir))},
                  source_kwargs={"negatives_per_image": None})
    csrc = tb.TfdsPairSource(cb.data_dir, "train", max_instances=4)
    ref = dcoco.CocoSource(str(path), str(img_dir), max_instances=4, negatives_per_image=None)
    assert len(csrc) == len(ref)
    for i in range(len(ref)):
        a, e = csrc[i], ref[i]
        for k in ("image", "text", "boxes", "masks", "valid", "is_exhaustive", "pair_id"):
            np.testing.assert_allclose(np.asarray(a[k], float) if k != "text" else 0,
                                       np.asarray(e[k], float) if k != "text" else 0, atol=1e-6)
        assert a["text"] == e["text"]


# --------------------------------------------------------------------------------------------- train.py sources
def _synthetic_cfg():
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_cfg", os.path.join(os.path.dirname(__file__), "..",
                                                                                "configs", "synthetic.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("")


def test_train_sources_from_the_config(tmp_path):
    from sam3_jax.train.inputs import make_sources

    cfg = _synthetic_cfg()
    cfg.data.synthetic = {"max_objects": 3, "clutter": False}
    train, val, held = make_sources(cfg)
    assert train.max_objects == 3 and not train.clutter and len(val) == cfg.data.eval_examples
    assert held.held_out_rate == 1.0 and all(held[i]["held_out"] for i in range(4))

    path, img_dir, _ = _make_coco(tmp_path)
    cfg.data.source = "coco"
    with pytest.raises(ValueError, match="--config.data.train_annotations"):
        make_sources(cfg)
    cfg.data.update(train_annotations=str(path), train_images=str(img_dir), val_annotations=str(path),
                    val_images=str(img_dir), eval_examples=5, negatives_per_image=None)
    train, val, held = make_sources(cfg)
    assert held is None and len(val) == 5 and len(train) == len(dcoco.CocoSource(str(path), str(img_dir),
                                                                                   negatives_per_image=None))
    with pytest.raises(IndexError):
        val[5]
    cfg.data.source = "tfds"
    with pytest.raises(ValueError, match="--config.data.tfds_dir"):
        make_sources(cfg)
    cfg.data.source = "imagenet"
    with pytest.raises(ValueError, match="unknown data.source 'imagenet'"):
        make_sources(cfg)


def test_scoring_happens_in_the_evaluation_mask_frame(tmp_path):
    """COCO images of several sizes are evaluated in the square frame of the batch masks: predictions
    equal to the GT there score cgF1 100; dropping them scores 0."""
    from sam3_jax.train.evaluator import score_rows

    path, img_dir, _ = _make_coco(tmp_path)
    src = dcoco.CocoSource(str(path), str(img_dir), negatives_per_image=None, max_instances=4)
    cfg = dp.PipelineConfig.for_eval(56, 4, mask_size=24)
    perfect, empty = [], []
    for b in dp.make_iterator(src, cfg):
        for i in np.flatnonzero(b["row_valid"]):
            m = b["masks"][i].astype(np.float32)
            logits = np.where(m > 0, 10.0, -10.0)
            cx, cy, w, h = np.moveaxis(b["boxes"][i], -1, 0)
            xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
            scores = np.where(b["valid"][i], 0.9, 0.1)
            perfect.append((b, i, scores, xyxy, logits))
            empty.append((b, i, np.zeros_like(scores), xyxy, logits))
    assert {r[0]["masks"].shape[-1] for r in perfect} == {24} and len({int(r[0]["height"][r[1]]) for r in perfect}) > 1
    good = score_rows(perfect)
    assert good["IL_MCC"] > 0.9999 and good["cgF1"] > 99.9, good
    assert score_rows(empty)["cgF1"] == 0.0
