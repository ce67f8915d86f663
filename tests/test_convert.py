"""Converter: full official key table (shape-only), round trips through files, strict rejections."""

import glob
import re
import subprocess

import numpy as np
import pytest

from sam3_jax.convert import (
    ConversionError,
    DtypeError,
    KeySpec,
    MissingKeyError,
    ShapeMismatchError,
    UnexpectedKeyError,
    convert_backbone,
    convert_image_model,
    load_state_dict,
)
from tests.conftest import official_key_table

TRUNK = "detector.backbone.vision_backbone.trunk"


def test_full_official_key_set_is_accounted_for(full_cfg):
    table = official_key_table()
    assert len(table) == 1465
    params, report = convert_backbone(table, full_cfg, dry_run=True)
    backbone_keys = [k for k in table if k.startswith("detector.backbone.")]
    assert len(report.recomputed) == 32 and all(k.endswith("attn.freqs_cis") for k in report.recomputed)
    assert len(report.consumed) == len(backbone_keys) - 32
    pending = {part: sorted(keys) for part, keys in report.pending.items()}
    expected = {
        "geometry / exemplar encoder": [k[len("detector."):] for k in table if k.startswith("detector.geometry_encoder.")],
        "fusion encoder": [k[len("detector."):] for k in table if k.startswith("detector.transformer.encoder.")],
        "DETR decoder": [k[len("detector."):] for k in table if k.startswith("detector.transformer.decoder.")],
        "dot-product scoring head": [k[len("detector."):] for k in table if k.startswith("detector.dot_prod_scoring.")],
        "segmentation head": [k[len("detector."):] for k in table if k.startswith("detector.segmentation_head.")],
        "tracker (video)": [k for k in table if k.startswith("tracker.")],
    }
    assert pending == {part: sorted(keys) for part, keys in expected.items()}
    assert {k: len(v) for k, v in report.pending.items()} == {
        "geometry / exemplar encoder": 76, "fusion encoder": 108, "DETR decoder": 175,
        "dot-product scoring head": 10, "segmentation head": 28, "tracker (video)": 309,
    }
    # Every backbone parameter of the official model, element for element.
    assert report.num_params == 446_237_696 + 2 * 7_802_112 + 353_724_672
    assert report.num_source_elements == report.num_params


def test_full_official_key_set_image_model(full_cfg):
    """Every key of sam3.pt is converted: detector and tracker, nothing left over."""
    table = official_key_table()
    params, report = convert_image_model(table, full_cfg, dry_run=True)
    assert len(report.consumed) + len(report.recomputed) == len(table) == 1465
    assert report.pending == {}
    # The official video model's 860,055,224 parameters plus the prompt encoder's random-Fourier
    # matrix (2 x 128), a buffer in torch and a (gradient-free) param here.
    assert report.num_params == 860_055_224 + 256
    assert sorted(params["tracker"]) == sorted([
        "mask_downsample", "maskmem_backbone", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc",
        "no_obj_embed_spatial", "no_obj_ptr", "obj_ptr_proj", "obj_ptr_tpos_proj", "sam_mask_decoder",
        "sam_prompt_encoder", "transformer"])


def test_full_key_set_without_tracker(full_cfg):
    """tracker=False converts the detector and reports the tracker as not converted."""
    table = official_key_table()
    _, report = convert_image_model(table, full_cfg, dry_run=True, tracker=False)
    assert {k: len(v) for k, v in report.pending.items()} == {"tracker (video)": 309}
    # 840,509,750 (official image model) + the tracker neck sam2_convs the checkpoint also holds.
    assert report.num_params == 840_509_750 + 7_802_112


def test_image_model_layout_with_instance_interactivity(full_cfg):
    """The image model built with enable_inst_interactivity keeps the tracker under
    `inst_interactive_predictor.model.` (and no `detector.` prefix): it converts the same."""
    table = {(k[len("detector."):] if k.startswith("detector.") else
              "inst_interactive_predictor.model." + k[len("tracker."):]): v
             for k, v in official_key_table().items()}
    _, report = convert_image_model(table, full_cfg, dry_run=True)
    assert report.pending == {} and report.num_params == 860_055_224 + 256
    both = {**table, "tracker.no_obj_ptr": table["inst_interactive_predictor.model.no_obj_ptr"]}
    with pytest.raises(ConversionError, match="two trackers"):
        convert_image_model(both, full_cfg, dry_run=True)
    missing = dict(table)
    del missing["inst_interactive_predictor.model.obj_ptr_tpos_proj.weight"]
    with pytest.raises(MissingKeyError, match=re.escape("inst_interactive_predictor.model.obj_ptr_tpos_proj.weight")):
        convert_image_model(missing, full_cfg, dry_run=True)


def test_tracker_required_but_absent(full_cfg):
    table = {k: v for k, v in official_key_table().items() if not k.startswith("tracker.")}
    with pytest.raises(MissingKeyError, match="no tracker"):
        convert_image_model(table, full_cfg, dry_run=True, tracker=True)
    _, report = convert_image_model(table, full_cfg, dry_run=True)
    assert report.pending == {} and report.num_params == 840_509_750 + 7_802_112


def test_tracker_key_errors_name_the_key(full_cfg):
    table = official_key_table()
    bad = dict(table)
    bad["tracker.maskmem_tpos_enc"] = KeySpec((6, 1, 1, 64), np.dtype("float32"))
    with pytest.raises(ShapeMismatchError, match=re.escape("tracker.maskmem_tpos_enc")):
        convert_image_model(bad, full_cfg, dry_run=True)
    extra = {**table, "tracker.extra_thing": KeySpec((3,), np.dtype("float32"))}
    with pytest.raises(UnexpectedKeyError, match="tracker.extra_thing"):
        convert_image_model(extra, full_cfg, dry_run=True)
    ints = {**table, "tracker.no_obj_ptr": KeySpec((1, 256), np.dtype("int64"))}
    with pytest.raises(DtypeError, match="tracker.no_obj_ptr"):
        convert_image_model(ints, full_cfg, dry_run=True)


@pytest.fixture(scope="module")
def tiny_image_state(tiny_cfg):
    from sam3_jax.parity import oracle

    return oracle.state_dict_numpy(oracle.random_image_model(tiny_cfg, seed=6))


@pytest.fixture(scope="module")
def tiny_state(tiny_cfg):
    from sam3_jax.parity import oracle

    return oracle.state_dict_numpy(oracle.random_backbone(tiny_cfg, seed=5))


@pytest.fixture(scope="module")
def tiny_params(tiny_state, tiny_cfg):
    return convert_backbone(tiny_state, tiny_cfg)[0]


def assert_trees_equal(a, b):
    import jax

    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_layouts_move_every_value(tiny_state, tiny_params):
    """Spot checks of the layout transforms against the official tensors."""
    p = tiny_params["backbone"]
    t = "backbone.vision_backbone.trunk"
    qkv = tiny_state[f"{t}.blocks.2.attn.qkv.weight"]  # (3*64, 64), rows [q; k; v], head-major
    q = p["vision_backbone"]["trunk"]["blocks"]["attn"]["query"]["kernel"][2]  # (64, 4, 16)
    np.testing.assert_array_equal(np.asarray(q)[:, 1, :], qkv[16:32].T)
    v = p["vision_backbone"]["trunk"]["blocks"]["attn"]["value"]["kernel"][2]
    np.testing.assert_array_equal(np.asarray(v)[:, 3, :], qkv[128 + 48 : 128 + 64].T)
    out = p["vision_backbone"]["trunk"]["blocks"]["attn"]["out"]["kernel"][2]  # (4, 16, 64)
    np.testing.assert_array_equal(np.asarray(out).reshape(64, 64), tiny_state[f"{t}.blocks.2.attn.proj.weight"].T)
    dconv = tiny_state["backbone.vision_backbone.convs.0.dconv_2x2_0.weight"]  # (in, out, 2, 2)
    np.testing.assert_array_equal(
        np.asarray(p["vision_backbone"]["convs"]["0"]["dconv_2x2_0"]["kernel"]), dconv.transpose(2, 3, 0, 1)
    )
    np.testing.assert_array_equal(
        np.asarray(p["vision_backbone"]["trunk"]["pos_embed"]), tiny_state[f"{t}.pos_embed"]
    )


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "npz"])
def test_roundtrip_through_files(tmp_path, tiny_state, tiny_params, tiny_cfg, fmt):
    import torch

    sd = {f"detector.{k}": v for k, v in tiny_state.items()}
    path = str(tmp_path / f"sam3.{fmt}")
    if fmt == "pt":
        torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    else:
        np.savez(path, **sd)
    params, report = convert_backbone(load_state_dict(path), tiny_cfg)
    assert_trees_equal(params, tiny_params)
    assert report.pending == {}


def test_bfloat16_checkpoint_loads(tmp_path, tiny_state, tiny_cfg):
    import torch

    path = str(tmp_path / "bf16.pt")
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
                for k, v in tiny_state.items()}, path)
    params, _ = convert_backbone(load_state_dict(path), tiny_cfg)
    w = tiny_state["backbone.language_backbone.resizer.weight"]
    np.testing.assert_allclose(np.asarray(params["backbone"]["language_backbone"]["resizer"]["kernel"]), w.T, rtol=1e-2, atol=1e-2)


def test_pickle_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": np.ones(3), "obj": ValueError("not a tensor")}, f)
    with pytest.raises(ValueError, match="weights-only"):
        load_state_dict(str(path))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict("/nonexistent/nope.pt")


def _tampered(state, **changes):
    s = dict(state)
    for k, v in changes.items():
        if v is None:
            s.pop(k)
        else:
            s[k] = v
    return s


KEY_W = "backbone.vision_backbone.trunk.blocks.1.mlp.fc1.weight"


def test_rejects_missing_key(tiny_state, tiny_cfg):
    with pytest.raises(MissingKeyError, match=re.escape(KEY_W)):
        convert_backbone(_tampered(tiny_state, **{KEY_W: None}), tiny_cfg)


@pytest.mark.parametrize(
    "key",
    [
        "backbone.vision_backbone.trunk.blocks.0.attn.extra",
        "backbone.vision_backbone.trunk.blocks.4.norm1.weight",  # a layer the config does not have
        "backbone.vision_backbone.trunk.patch_embed.proj.bias",  # the patch conv has no bias
        "something.else",
    ],
)
def test_rejects_unexpected_key(tiny_state, tiny_cfg, key):
    with pytest.raises(UnexpectedKeyError, match=re.escape(key)):
        convert_backbone(_tampered(tiny_state, **{key: np.zeros(64, np.float32)}), tiny_cfg)


def test_rejects_wrong_shape(tiny_state, tiny_cfg):
    bad = tiny_state[KEY_W][:, :-1]
    with pytest.raises(ShapeMismatchError, match=re.escape(KEY_W)):
        convert_backbone(_tampered(tiny_state, **{KEY_W: bad}), tiny_cfg)


def test_rejects_non_float_dtype(tiny_state, tiny_cfg):
    bad = tiny_state[KEY_W].astype(np.int32)
    with pytest.raises(DtypeError, match=re.escape(KEY_W)):
        convert_backbone(_tampered(tiny_state, **{KEY_W: bad}), tiny_cfg)


def test_rejects_checkpoint_of_another_config(tiny_state, tiny_cfg):
    """Same tensor shapes but another window size: only the stored RoPE tables reveal it."""
    cfg = tiny_cfg.copy_and_resolve_references()
    cfg.vit.window_size = 4
    with pytest.raises(ConversionError, match=r"freqs_cis"):
        convert_backbone(tiny_state, cfg)


def test_full_checkpoint_shapes_rejected_by_tiny_config(tiny_cfg):
    with pytest.raises(ShapeMismatchError, match=re.escape(f"{TRUNK[len('detector.'):]}.pos_embed")):
        convert_backbone(official_key_table(), tiny_cfg, dry_run=True)


def test_convert_weights_cli(tmp_path, tiny_image_state, tiny_cfg, repo_root, python):
    """A sam3.pt with detector and tracker (tiny): one param tree, nothing left unconverted."""
    import torch

    from sam3_jax.parity import oracle

    torch.manual_seed(1)
    tracker_state = {f"tracker.{k}": v for k, v in oracle.state_dict_numpy(oracle.build_tracker(tiny_cfg)).items()}
    full_state = {**{f"detector.{k}": v for k, v in tiny_image_state.items()}, **tracker_state}
    ckpt = tmp_path / "sam3.pt"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in full_state.items()}}, ckpt)
    out = tmp_path / "converted"
    cmd = [python, "convert_weights.py", "--checkpoint", str(ckpt), "--output", str(out),
           "--config", "configs/sam3.py:tiny"]
    r = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from sam3_jax.convert.checkpoint import load_converted, sha256_file

    params, manifest = load_converted(str(out))
    assert manifest["source"]["sha256"] == sha256_file(str(ckpt))
    assert manifest["model_config"]["variant"] == "tiny"
    assert manifest["num_params"] == 18_765_398 + 6_382_978  # detector + tracker at the tiny config
    assert manifest["not_converted"] == {} and manifest["tracker"] is True
    assert_trees_equal(params, convert_image_model(full_state, tiny_cfg)[0])
    # Existing output is not overwritten without --overwrite.
    r = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "already exists" in r.stderr


def test_convert_weights_cli_failure_leaves_nothing(tmp_path, tiny_image_state, repo_root, python):
    import torch

    bad = _tampered(tiny_image_state, **{KEY_W: None})
    ckpt = tmp_path / "bad.pt"
    torch.save({f"detector.{k}": torch.from_numpy(v) for k, v in bad.items()}, ckpt)
    out = tmp_path / "converted"
    r = subprocess.run(
        [python, "convert_weights.py", "--checkpoint", str(ckpt), "--output", str(out), "--config", "configs/sam3.py:tiny"],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 1
    assert f"detector.{KEY_W}" not in r.stderr and KEY_W in r.stderr
    assert not out.exists()
    assert glob.glob(str(tmp_path / ".converted*")) == []


def test_convert_weights_cli_rejects_checkpoint_of_another_config(tmp_path, tiny_image_state, repo_root, python):
    import torch

    ckpt = tmp_path / "tiny.pt"
    torch.save({f"detector.{k}": torch.from_numpy(v) for k, v in tiny_image_state.items()}, ckpt)
    out = tmp_path / "converted"
    r = subprocess.run(
        [python, "convert_weights.py", "--checkpoint", str(ckpt), "--output", str(out), "--config", "configs/sam3.py:full"],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 1
    assert "key backbone.vision_backbone.trunk.pos_embed: expected shape (1, 577, 1024)" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "key",
    ["transformer.decoder.layers.1.cross_attn.in_proj_weight", "geometry_encoder.boxes_pool_project.weight",
     "segmentation_head.pixel_decoder.conv_layers.2.weight", "dot_prod_scoring.prompt_mlp.out_norm.bias"],
)
def test_image_model_rejects_missing_detector_key(tiny_image_state, tiny_cfg, key):
    with pytest.raises(MissingKeyError, match=re.escape(key)):
        convert_image_model(_tampered(tiny_image_state, **{key: None}), tiny_cfg)
