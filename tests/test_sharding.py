"""Sharding over (data, fsdp, tensor) meshes of 8 simulated CPU devices: param shardings follow the
logical-axis rules, and a sharded forward pass and train step equal the single-device results.

The train-step comparison runs in float64: in float32, sharded and unsharded gradients legitimately
differ by ~1e-5 relative where a gradient is a long cancelling sum (a conv bias before GroupNorm:
measured 1.1e-5 to 2.6e-5), which would hide a real error as easily as flag a false one. In float64
any difference beyond round-off is a sharding bug. The float32 forward pass is checked as well."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from sam3_jax.parallel.mesh import (
    batch_sharding,
    explain_shardings,
    logical_rules,
    make_mesh,
    resolve_mesh_shape,
)
from sam3_jax.parallel.state import abstract_params, init_params, init_train_state
from sam3_jax.train.step import make_forward, make_train_step

# (2, 2, 2) splits every axis at once and (1, 4, 2) takes fsdp 4 with tensor parallelism; pure data
# parallelism (8, 1, 1) and (2, 4, 1) add nothing those two miss (the batch axis is also split across
# processes in tests/test_multihost.py), so they run with `-m slow` only (each costs ~2 min on 2 cores).
MESHES = [pytest.param((8, 1, 1), marks=pytest.mark.slow), pytest.param((2, 4, 1), marks=pytest.mark.slow),
          (2, 2, 2), (1, 4, 2)]
B = 8


def experiment_config(variant: str = "tiny"):
    """configs/sam3.py:<variant>, loaded the way the CLIs load it."""
    import importlib.util
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("sam3_cfg", os.path.join(repo, "configs", "sam3.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


def mesh_test_config():
    """configs/sam3.py:tiny at a quarter of its activation size for the mesh tests (and the
    two-process test): 112 px (an 8x8 token grid) and d_model 64 instead of the official small
    builder's 224 px / 256. Every module and logical axis of the tiny model is there (both necks
    included) and every sharded dim still divides the mesh axes (2 and 4); the float64 train steps
    on four meshes cost ~15 s each instead of ~100 s on a 2-core AVX2 machine. Parity with the
    official modules is checked at the tiny sizes elsewhere; sharding does not depend on them."""
    cfg = experiment_config("tiny")
    m = cfg.model
    m.image_size = 112
    m.vit.update(window_size=4, pretrain_image_size=56)
    m.neck.d_model = m.d_model = 64
    m.num_heads = 4
    m.dim_feedforward = 128
    return cfg


@pytest.fixture(scope="module")
def setup():
    from sam3_jax.model.sam3_image import Sam3Image

    cfg = mesh_test_config()
    model = Sam3Image(cfg.model)
    s = cfg.model.image_size
    specs = [jax.ShapeDtypeStruct((B, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((B, 32), jnp.int32),
             jax.ShapeDtypeStruct((B, 3, 4), jnp.float32), jax.ShapeDtypeStruct((B, 3), jnp.int32),
             jax.ShapeDtypeStruct((B, 3), jnp.bool_)]
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.standard_normal((B, s, s, 3)).astype(np.float32),
        "tokens": np.where(np.arange(32)[None] < rng.integers(3, 12, (B, 1)), rng.integers(1, 49000, (B, 32)), 0).astype(np.int32),
        "boxes": np.concatenate([rng.uniform(0.3, 0.7, (B, 3, 2)), rng.uniform(0.1, 0.3, (B, 3, 2))], -1).astype(np.float32),
        "box_labels": rng.integers(0, 2, (B, 3)).astype(np.int32),
        "box_mask": np.arange(3)[None] >= rng.integers(0, 4, (B, 1)),
    }
    return cfg, model, specs, batch


OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks", "presence_logit_dec")


def surrogate_loss(out, batch):
    """Any smooth function of every output head: the sharding tests need gradients, not SAM 3's loss.
    The outputs ride along in the metrics, so one compiled step checks the forward pass too."""
    loss = (jnp.mean(out["pred_logits"] ** 2) + jnp.mean(out["pred_boxes"] ** 2)
            + jnp.mean(jax.nn.sigmoid(out["pred_masks"])) + jnp.mean(out["presence_logit_dec"] ** 2)
            + jnp.mean(out["semantic_seg"] ** 2))
    return loss, {k: out[k] for k in OUTPUTS}


def run_on_mesh(setup, shape, dtype="float32", *, train_step=True):
    if dtype == "float64":
        with jax.enable_x64(True):
            return _run_on_mesh(_as_float64(setup), shape, train_step)
    return _run_on_mesh(setup, shape, train_step)


def _as_float64(setup):
    from sam3_jax.model.sam3_image import Sam3Image

    cfg, _, specs, batch = setup
    cfg = cfg.copy_and_resolve_references()
    cfg.model.dtype = cfg.model.param_dtype = "float64"
    f64 = lambda x: x.astype(np.float64) if x.dtype == np.float32 else x  # noqa: E731
    specs = [jax.ShapeDtypeStruct(s.shape, jnp.float64 if s.dtype == jnp.float32 else s.dtype) for s in specs]
    return cfg, Sam3Image(cfg.model), specs, {k: f64(v) for k, v in batch.items()}


def _run_on_mesh(setup, shape, train_step):
    cfg, model, specs, batch = setup
    n = int(np.prod(shape))
    mesh = make_mesh(ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), shape))), jax.devices()[:n])
    rules = logical_rules(cfg)
    tx = optax.sgd(1e-2)
    params, p_sh = init_params(model, jax.random.key(0), specs, mesh, rules)
    state, s_sh = init_train_state(params, p_sh, tx, mesh)
    b_sh = {k: batch_sharding(mesh, v.ndim, rules) for k, v in batch.items()}
    gbatch = {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()}
    actual = jax.tree_util.tree_map(lambda x: x.sharding.spec, state["params"])
    res = {"specs": actual, "mesh": mesh, "rules": rules}
    if not train_step:
        out = make_forward(model, mesh, rules, p_sh, b_sh)(state["params"], gbatch)
        res["out"] = jax.device_get({k: out[k] for k in OUTPUTS})
        res["loss"] = float(surrogate_loss(out, batch)[0])
        return res
    state, metrics = make_train_step(model, tx, surrogate_loss, mesh, rules, s_sh, b_sh)(state, gbatch)
    res["out"] = jax.device_get({k: metrics[k] for k in OUTPUTS})
    res["loss"] = float(metrics["loss"])
    res["params"] = jax.device_get(state["params"])
    return res


@pytest.fixture(scope="module")
def single(setup):
    return run_on_mesh(setup, (1, 1, 1), "float64")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_and_step_equal_single_device(setup, single, shape):
    res = run_on_mesh(setup, shape, "float64")
    for k in single["out"]:
        assert _rel(res["out"][k], single["out"][k]) <= 1e-5, k
    assert abs(res["loss"] - single["loss"]) <= 1e-5 * abs(single["loss"])
    flat_a = jax.tree_util.tree_leaves_with_path(res["params"])
    flat_b = jax.tree_util.tree_leaves(single["params"])
    for (path, a), b in zip(flat_a, flat_b):
        name = jax.tree_util.keystr(path)
        if np.max(np.abs(b)) < 1e-9:
            # A zero-initialised leaf whose gradient is analytically zero (softmax is invariant to a
            # key bias without RoPE, and to the per-head bias of boxRPB): after one step it holds
            # round-off only (jax's attention takes the softmax in float32). Both must stay there.
            assert np.max(np.abs(a)) < 1e-9, name
            continue
        assert _rel(a, b) <= 1e-5, name
    check_specs_follow_rules(setup, res)


def test_float32_forward_equals_single_device(setup):
    ref = run_on_mesh(setup, (1, 1, 1), train_step=False)
    res = run_on_mesh(setup, (2, 2, 2), train_step=False)
    for k in ref["out"]:
        assert _rel(res["out"][k], ref["out"][k]) <= 1e-5, k
    assert abs(res["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"])


def check_specs_follow_rules(setup, res):
    """Every param's actual sharding is what the rules give, except indivisible dims (replicated)."""
    cfg, model, specs, _ = setup
    mesh, rules = res["mesh"], res["rules"]
    boxed = abstract_params(model, specs, mesh, rules)
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    actual = dict((jax.tree_util.keystr(p), s) for p, s in jax.tree_util.tree_leaves_with_path(
        res["specs"], is_leaf=lambda x: isinstance(x, P)))
    for path, leaf in leaves:
        wanted = tuple(nn.logical_to_mesh_axes(leaf.names, rules))
        got = tuple(actual[jax.tree_util.keystr(path)]) + (None,) * leaf.value.ndim
        for dim, w, g in zip(leaf.value.shape, wanted, got):
            size = int(np.prod([mesh.shape[a] for a in ((w,) if isinstance(w, str) else (w or ()))]))
            assert g == (w if dim % size == 0 else None), (jax.tree_util.keystr(path), wanted, got)


def test_named_param_shardings(setup):
    """Spot checks on (2, 2, 2): the specs a reader of configs/sam3.py expects."""
    cfg, model, specs, _ = setup
    mesh = make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    rules = logical_rules(cfg)
    from sam3_jax.parallel.mesh import param_specs

    s = param_specs(abstract_params(model, specs, mesh, rules), mesh, rules)
    trunk = s["backbone"]["vision_backbone"]["trunk"]
    assert trunk["blocks"]["attn"]["query"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert trunk["blocks"]["attn"]["out"]["kernel"] == P(None, "tensor", None, "fsdp")
    assert trunk["blocks"]["mlp"]["fc1"]["kernel"] == P(None, "fsdp", "tensor")
    assert trunk["blocks"]["mlp"]["fc2"]["kernel"] == P(None, "tensor", "fsdp")
    assert trunk["patch_embed"]["kernel"] == P(None, None, None, "tensor")  # 3 RGB channels: not split
    text = s["backbone"]["language_backbone"]["encoder"]
    assert text["token_embedding"]["embedding"] == P("tensor", "fsdp")
    notes = explain_shardings(abstract_params(model, specs, mesh, rules), mesh, rules)
    assert any("patch_embed" in n for n in notes)


def test_adamw_state_follows_params(setup):
    cfg, model, specs, _ = setup
    mesh = make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=2)), jax.devices()[:8])
    rules = logical_rules(cfg)
    params, p_sh = init_params(model, jax.random.key(0), specs, mesh, rules)
    state, _ = init_train_state(params, p_sh, optax.adamw(1e-3), mesh)
    mu = state["opt_state"][0].mu
    for a, b in zip(jax.tree_util.tree_leaves(mu), jax.tree_util.tree_leaves(params)):
        assert a.sharding == b.sharding


def test_mesh_shape_resolution():
    assert resolve_mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert resolve_mesh_shape(dict(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="at most one mesh axis"):
        resolve_mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
    with pytest.raises(ValueError, match="needs 12 devices"):
        resolve_mesh_shape(dict(data=3, fsdp=2, tensor=2), 8)
    with pytest.raises(ValueError, match="cannot be split"):
        resolve_mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)


def test_converted_params_placed_into_shardings(setup):
    """Converted (host) params go straight into their shardings: each device gets its own shard."""
    pytest.importorskip("sam3")
    from sam3_jax.convert import convert_image_model
    from sam3_jax.model.sam3_image import Sam3Image
    from sam3_jax.parallel.mesh import param_shardings
    from sam3_jax.parallel.state import place_params
    from sam3_jax.parity import oracle

    cfg = experiment_config("tiny")  # the official builders need the official d_model (256)
    model = Sam3Image(cfg.model)
    s = cfg.model.image_size
    specs = [jax.ShapeDtypeStruct((B, s, s, 3), jnp.float32)] + setup[2][1:]
    host, _ = convert_image_model(oracle.state_dict_numpy(oracle.random_image_model(cfg.model, seed=2)), cfg.model)
    mesh = make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    rules = logical_rules(cfg)
    shardings = param_shardings(abstract_params(model, specs, mesh, rules), mesh, rules)
    placed = place_params(jax.device_get(host), shardings)
    for (path, a), b, s in zip(jax.tree_util.tree_leaves_with_path(placed), jax.tree_util.tree_leaves(host),
                               jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: hasattr(x, "spec"))):
        assert a.sharding == s, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = placed["backbone"]["vision_backbone"]["trunk"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (4, 32, 148)  # (layers, embed/fsdp, mlp/tensor)
