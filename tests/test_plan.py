"""The memory planner's exact figures equal the byte counts of the sharded state (jax.eval_shape), for
training and for a video session (`--video`)."""

import subprocess

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from sam3_jax.parallel.mesh import bytes_per_device, logical_rules, make_mesh, param_shardings
from sam3_jax.parallel.plan import parse_mesh, plan
from sam3_jax.parallel.state import abstract_params, opt_state_shardings, unboxed_abstract
from tests.test_sharding import experiment_config


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1), (1, 4, 2)])
def test_plan_equals_sharded_state_bytes(shape):
    from sam3_jax.model.sam3_image import Sam3Image

    cfg = experiment_config("full")
    mesh_dict = dict(zip(("data", "fsdp", "tensor"), shape))
    mesh = make_mesh(ml_collections.ConfigDict(mesh_dict))
    rules = logical_rules(cfg)
    s = cfg.model.image_size
    specs = [jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((1, 32), jnp.int32),
             jax.ShapeDtypeStruct((1, 1, 4), jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32),
             jax.ShapeDtypeStruct((1, 1), jnp.bool_)]
    boxed = abstract_params(Sam3Image(cfg.model), specs, mesh, rules)
    p_sh = param_shardings(boxed, mesh, rules)
    params = unboxed_abstract(boxed)
    tx = optax.adamw(1e-4)
    opt = jax.eval_shape(tx.init, params)
    o_sh = opt_state_shardings(tx, params, p_sh, mesh)
    p = plan(cfg, mesh_dict, global_batch=shape[0] * shape[1])
    assert p.num_params == 848_311_862
    assert p.params == bytes_per_device(params, p_sh)
    assert p.opt_state == bytes_per_device(opt, o_sh)
    assert p.grads == p.params and p.activations > 0


def test_plan_cli(repo_root, python):
    r = subprocess.run([python, "-m", "sam3_jax.plan", "--config", "configs/sam3.py:tiny", "--mesh",
                        "data=2,fsdp=4,tensor=1", "--batch", "16"], cwd=repo_root, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "8 devices; global batch 16 (2 per device)" in r.stdout and "optimizer" in r.stdout
    r = subprocess.run([python, "-m", "sam3_jax.plan", "--config", "configs/sam3.py:tiny", "--mesh", "data=3",
                        "--batch", "16"], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not divisible" in r.stderr


def test_parse_mesh_errors():
    assert parse_mesh("fsdp=4") == {"data": 1, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="unknown mesh axis"):
        parse_mesh("pipeline=2")
    with pytest.raises(ValueError, match="axis=size"):
        parse_mesh("data")


# ------------------------------------------------------------------ video sessions


def _video_state_bytes(cfg, objects, mesh_dict):
    """Bytes per device of an actual `VideoState.empty`, placed as `Sam3VideoPredictor` places it."""
    import types

    import numpy as np

    from sam3_jax.config import LOGICAL_AXIS_RULES
    from sam3_jax.model.video.step import VideoConfig, VideoState
    from sam3_jax.predict.video import Sam3VideoPredictor

    vcfg = VideoConfig(max_objects=objects)
    state = VideoState.empty(cfg.model, vcfg)
    if mesh_dict["data"] * mesh_dict["fsdp"] * mesh_dict["tensor"] == 1:
        return sum(int(np.asarray(x).nbytes) for x in jax.tree_util.tree_leaves(state)), state
    mesh = make_mesh(ml_collections.ConfigDict(mesh_dict))
    fake = types.SimpleNamespace(video_config=vcfg, mesh=mesh, rules=LOGICAL_AXIS_RULES)
    return bytes_per_device(state, Sam3VideoPredictor.state_shardings(fake, state)), state


def test_video_plan_state_equals_sharded_state():
    from sam3_jax.parallel.plan import video_plan

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets jax_num_cpu_devices=8)")
    cfg = experiment_config("tiny")
    one, eight = {"data": 1, "fsdp": 1, "tensor": 1}, {"data": 8, "fsdp": 1, "tensor": 1}
    p1 = video_plan(cfg, one, 16, video_hw=(48, 64), activations="analytic")
    p8 = video_plan(cfg, eight, 16, video_hw=(48, 64), activations="analytic")
    want1, state = _video_state_bytes(cfg, 16, one)
    want8, _ = _video_state_bytes(cfg, 16, eight)
    assert p1.state == want1 and p8.state == want8
    # the object-axis leaves shrink 8x, the few scalars stay
    scalars = sum(x.nbytes for x in jax.tree_util.tree_leaves(state) if x.ndim == 0)
    assert p8.state == (p1.state - scalars) // 8 + scalars
    assert (p1.objects_per_device, p8.objects_per_device) == (16, 2)
    assert not any("replicates" in n for n in p8.notes)
    # params are replicated: the same on every mesh; the tracker is counted
    assert p1.params == p8.params > 0 and p1.num_params > 0
    assert p8.outputs < p1.outputs and p8.host_output == p1.host_output >= 16 * 48 * 64
    assert 0 < p8.activations < p1.activations and p8.total < p1.total
    # twice the objects: about twice the state (and the step's outputs); bf16 params: half the bytes
    p32 = video_plan(cfg, eight, 32, video_hw=(48, 64), activations="analytic", param_dtype="bfloat16")
    assert p32.state / p8.state == pytest.approx(2, rel=0.02) and p32.objects_per_device == 4
    assert p32.host_output / p8.host_output == pytest.approx(2, rel=0.02)
    assert p32.params * 2 == p8.params and p32.num_params == p8.num_params


def test_objects_per_device():
    from sam3_jax.config import LOGICAL_AXIS_RULES
    from sam3_jax.parallel.plan import objects_per_device

    assert objects_per_device(64, {"data": 4, "fsdp": 2, "tensor": 8}, LOGICAL_AXIS_RULES) == (8, "")
    # 9 objects do not divide over 8 devices: replicated, as the predictor does, and said so
    k, note = objects_per_device(9, {"data": 8, "fsdp": 1, "tensor": 1}, LOGICAL_AXIS_RULES)
    assert k == 9 and "replicates the object axis" in note


def test_video_plan_cli(repo_root, python):
    base = [python, "-m", "sam3_jax.plan", "--config", "configs/sam3.py:tiny", "--video", "--mesh", "data=4,fsdp=2"]
    r = subprocess.run(base + ["--objects", "32", "--video_size", "72x128", "--activations", "analytic"],
                       cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "8 devices; 32 objects (4 per device)" in r.stdout and "video state" in r.stdout
    assert "activations" in r.stdout and "analytic" in r.stdout and "host output" in r.stdout
    for flag, message in ((["--objects", "0"], "--objects must be >= 1"),
                          (["--video_size", "1080"], "--video_size expects HEIGHTxWIDTH")):
        r = subprocess.run(base + flag, cwd=repo_root, capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]


def test_parse_video_size():
    from sam3_jax.parallel.plan import parse_video_size

    assert parse_video_size("1080x1920") == (1080, 1920)
    for bad in ("1080", "1080x", "0x10", "axb", "1x2x3", "-1x5"):
        with pytest.raises(ValueError, match="video_size"):
            parse_video_size(bad)


@pytest.mark.slow
def test_video_plan_compiled_activations():
    """XLA's figure (the step compiled for one device's objects) and the analytical estimate agree
    roughly at the tiny config (about half a minute: one compile)."""
    from sam3_jax.parallel.plan import video_plan

    cfg = experiment_config("tiny")
    mesh = {"data": 2, "fsdp": 1, "tensor": 1}
    c = video_plan(cfg, mesh, 4, video_hw=(240, 320))
    a = video_plan(cfg, mesh, 4, video_hw=(240, 320), activations="analytic")
    assert "compiled for 2 objects" in c.activation_method and c.state == a.state
    assert 0.5 < a.activations / c.activations < 2.0
