"""`official_init` draws every parameter the way the official PyTorch modules initialise it: compared
leaf by leaf, through the converter, with a freshly constructed official detector (tiny config)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.model.init import official_init


def _flat(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_official_init_matches_the_official_modules(tiny_cfg):
    pytest.importorskip("sam3")
    import torch

    from sam3_jax.convert import convert_image_model
    from sam3_jax.parity import oracle

    torch.manual_seed(0)
    ref = oracle.build_image_model(tiny_cfg)
    oracle.init_uninitialized_(ref, 0)  # the text encoder's two torch.empty tensors
    theirs_tree, _ = convert_image_model(oracle.state_dict_numpy(ref), tiny_cfg)
    ours_tree = jax.jit(official_init)(jax.tree_util.tree_map(jnp.asarray, theirs_tree), jax.random.key(0))
    theirs, ours = _flat(theirs_tree), _flat(ours_tree)
    assert ours.keys() == theirs.keys()
    checked, bad = 0, []
    for name, t in theirs.items():
        o = ours[name]
        assert o.shape == t.shape and o.dtype == t.dtype, name
        if name.startswith("backbone/language_backbone/encoder/"):
            np.testing.assert_array_equal(o, t, err_msg=f"{name}: the text encoder keeps its own init")
            continue
        if not np.any(t):
            assert not np.any(o), f"{name}: zero in the official model, not here"
            continue
        if t.size < 32:  # too few values for a spread estimate
            continue
        if t.std() == 0:  # constants (norm scales)
            np.testing.assert_array_equal(o, t, err_msg=name)
            continue
        if abs(o.std() / t.std() - 1) > 0.1 + 3 / np.sqrt(t.size):
            bad.append(f"{name}: std {o.std():.4g} vs official {t.std():.4g}")
        if abs(o.mean()) > 4 * t.std() / np.sqrt(t.size) + 1e-6:
            bad.append(f"{name}: mean {o.mean():.3g} (official std {t.std():.3g})")
        checked += 1
    assert not bad, "\n".join(bad)
    assert checked > 100


def test_official_init_is_deterministic_and_keyed(tiny_cfg):
    from sam3_jax.model.sam3_image import image_model_target_shapes

    shapes = image_model_target_shapes(tiny_cfg)
    params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    a, b, c = (_flat(official_init(params, jax.random.key(k))) for k in (0, 0, 1))
    kernel = "transformer/decoder/layers/cross_attn/query/kernel"
    np.testing.assert_array_equal(a[kernel], b[kernel])
    assert not np.array_equal(a[kernel], c[kernel])
    # stacked layers draw independently
    assert not np.array_equal(a[kernel][0], a[kernel][1])
    # box refinement starts at the reference boxes
    assert not np.any(a["transformer/decoder/bbox_embed/layers/2/kernel"])


def test_train_refuses_an_unknown_init(tmp_path, repo_root):
    import importlib.util
    import os

    from sam3_jax.train.loop import train

    spec = importlib.util.spec_from_file_location("syn", os.path.join(repo_root, "configs", "synthetic.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("smoke")
    assert cfg.train.init == "official"
    cfg.train.init = "xavier"
    with pytest.raises(ValueError, match="train.init must be 'flax' or 'official', got 'xavier'"):
        train(cfg, str(tmp_path / "w"), progress=False, log=lambda *_: None)
    assert not os.path.exists(tmp_path / "w")  # refused before anything is written


def test_init_params_transform_runs_in_the_same_jit():
    """init_params(transform=official_init...) gives exactly what re-drawing afterwards gives, sharded as
    init_shardings says (the training loop uses it so one param-sized buffer is ever materialised).
    On the synthetic config's model (the smallest; three sharded inits of the tiny one took minutes)."""
    import ml_collections

    from conftest import synthetic_model_config
    from sam3_jax.model.sam3_image import Sam3Image
    from sam3_jax.config import LOGICAL_AXIS_RULES
    from sam3_jax.parallel.mesh import logical_rules, make_mesh
    from sam3_jax.parallel.state import init_params, init_shardings

    cfg = synthetic_model_config()
    model = Sam3Image(cfg)
    s, b = cfg.image_size, 2
    specs = [jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((b, 32), jnp.int32),
             jax.ShapeDtypeStruct((b, 2, 4), jnp.float32), jax.ShapeDtypeStruct((b, 2), jnp.int32),
             jax.ShapeDtypeStruct((b, 2), jnp.bool_)]
    mesh = make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=1)), jax.devices()[:4])
    rules = logical_rules(ml_collections.ConfigDict(dict(logical_axis_rules=LOGICAL_AXIS_RULES)))
    redraw = lambda p: official_init(p, jax.random.key(7))  # noqa: E731
    plain, sh = init_params(model, jax.random.key(3), specs, mesh, rules)
    fused, sh2 = init_params(model, jax.random.key(3), specs, mesh, rules, transform=redraw)
    after = jax.jit(redraw, out_shardings=sh)(plain)
    want = init_shardings(model, specs, mesh, rules)
    assert jax.tree_util.tree_leaves(sh2) == jax.tree_util.tree_leaves(want)
    assert [x.sharding for x in jax.tree_util.tree_leaves(fused)] == jax.tree_util.tree_leaves(want)
    fa, fb = _flat(fused), _flat(after)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    kernel = "transformer/decoder/layers/cross_attn/query/kernel"
    assert not np.array_equal(fa[kernel], _flat(plain)[kernel])  # the transform did run
