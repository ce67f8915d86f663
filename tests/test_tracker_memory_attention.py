"""Tracker memory attention against the official `TransformerEncoderCrossAttention` built as
`_create_tracker_transformer` builds it (tiny config, 1 and 2 layers, seeded + perturbed weights,
converted with `memory_attention_rules`); the memory-mask extension (a padded bank with masked
garbage slots gives the official result on the unpadded bank); the RoPE table; conversion of the
released keys; logical axes; input errors."""

from __future__ import annotations

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.convert.convert import KeySpec, ShapeMismatchError, convert
from sam3_jax.convert.rules_tracker_attention import memory_attention_rules
from sam3_jax.layers.core import count_params
from sam3_jax.model.tracker.memory_attention import memory_attention_from_config, tracker_rope_tables
from tests.conftest import assert_parity, official_key_table

torch = pytest.importorskip("torch")

TOL = 1e-5
SEED = 0
PREFIX = "tracker.transformer.encoder."
# Released key set (sam3_official_keys.tsv): 4 layers x 26 tensors + the final norm.
FULL_NUM_KEYS = 106
FULL_PARAMS = 5_922_304


def _grid(cfg) -> int:
    return cfg.image_size // cfg.vit.patch_size


def _cfg(tiny_cfg, num_layers: int):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.tracker.memory_attention_layers = num_layers
    return cfg


def _boxed_params(cfg) -> dict:
    """Boxed abstract params of the memory attention at cfg's sizes."""
    g, c, m = _grid(cfg), cfg.tracker.d_model, cfg.tracker.mem_dim
    sds = jax.ShapeDtypeStruct
    model = memory_attention_from_config(cfg)
    return jax.eval_shape(
        lambda k, *a: model.init(k, *a, 4), jax.random.key(0), sds((1, g * g, c), jnp.float32),
        sds((1, g * g, c), jnp.float32), sds((1, g * g + 4, m), jnp.float32), sds((1, g * g + 4, m), jnp.float32),
    )["params"]


_BUILT: dict = {}


def _setup(tiny_cfg, num_layers: int):
    """(official module, converted params, our module, cfg) for a layer count, built once."""
    if num_layers not in _BUILT:
        from sam3_jax.parity.oracle import build_memory_attention, perturb_all_, state_dict_numpy

        cfg = _cfg(tiny_cfg, num_layers)
        torch.manual_seed(SEED)
        module = build_memory_attention(cfg)
        perturb_all_(module, SEED)
        state = {f"tracker.{k}": v for k, v in state_dict_numpy(module).items()}
        assert len(state) == 26 * num_layers + 2 and all(k.startswith(PREFIX) for k in state)
        target = {"tracker": {"transformer": {"encoder": nn.meta.unbox(_boxed_params(cfg))}}}
        converted, report = convert(state, target, memory_attention_rules(cfg), pending_parts={})
        assert sorted(report.consumed) == sorted(state) and not report.recomputed and not report.pending
        params = converted["tracker"]["transformer"]["encoder"]
        _BUILT[num_layers] = (module, params, memory_attention_from_config(cfg), cfg)
    return _BUILT[num_layers]


def _seq_first(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(1, 0, 2)))


def _run_official(module, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens: int, g: int) -> np.ndarray:
    with torch.no_grad():
        out = module.transformer.encoder(
            src=[_seq_first(curr)], src_key_padding_mask=[None], src_pos=[_seq_first(curr_pos)],
            prompt=_seq_first(memory), prompt_pos=_seq_first(memory_pos), prompt_key_padding_mask=None,
            feat_sizes=[(g, g)], num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
    return out["memory"].transpose(0, 1).numpy()


def _run_ours(model, params, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens: int, memory_mask=None):
    fn = jax.jit(lambda p, *a, mask: model.apply({"params": p}, *a, num_obj_ptr_tokens, memory_mask=mask))
    return np.asarray(fn(params, curr, curr_pos, memory, memory_pos, mask=memory_mask))


def _inputs(rng, cfg, b: int, frames: int, ptrs: int):
    g, c, m = _grid(cfg), cfg.tracker.d_model, cfg.tracker.mem_dim
    n = frames * g * g + ptrs
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f(b, g * g, c), f(b, g * g, c), f(b, n, m), f(b, n, m)


# --------------------------------------------------------------------------------------------
# Parity


CASES = {
    "1frame_0ptr": (1, 0),
    "3frames_8ptr": (3, 8),  # 2 pointers of 4 x mem_dim tokens each
    "0frames_4ptr": (0, 4),  # pointer tokens only: no key gets RoPE
}


# Every case with 2 layers (the scanned stack); the tiny config's single layer on the main case.
@pytest.mark.parametrize("case,num_layers", [(c, 2) for c in CASES] + [("3frames_8ptr", 1)])
def test_memory_attention_parity(case, num_layers, tiny_cfg):
    module, params, model, cfg = _setup(tiny_cfg, num_layers)
    frames, ptrs = CASES[case]
    rng = np.random.default_rng(frames * 10 + ptrs)
    x = _inputs(rng, cfg, 2, frames, ptrs)
    ref = _run_official(module, *x, ptrs, _grid(cfg))
    ours = _run_ours(model, params, *x, ptrs)
    assert ours.shape == ref.shape == (2, _grid(cfg) ** 2, cfg.tracker.d_model)
    err = assert_parity(ours, ref, TOL, f"{case} ({num_layers} layers)")
    print(f"memory attention {case}, {num_layers} layers: max abs err {err:.3g} (max |official| "
          f"{np.max(np.abs(ref)):.3g})")


def test_padded_masked_memory_matches_official_unpadded(tiny_cfg):
    """A fixed-capacity bank: 5 frame slots and 12 pointer slots, holding per batch row a different
    subset of frames and pointer tokens (empty slots interleaved with used ones and filled with large
    garbage), masked by `memory_mask`; each row equals the official run on its own unpadded memory.
    Other garbage gives a bit-identical output."""
    module, params, model, cfg = _setup(tiny_cfg, 2)
    g, c, m = _grid(cfg), cfg.tracker.d_model, cfg.tracker.mem_dim
    n = g * g
    rng = np.random.default_rng(5)
    frame_slots, ptr_slots = 5, 12
    # Row 0: frames in slots 1, 3, 4 and 8 pointer tokens; row 1: frame in slot 2 and 4 pointer tokens.
    used_frames = [[1, 3, 4], [2]]
    used_ptrs = [[0, 1, 2, 3, 6, 7, 8, 9], [5, 6, 10, 11]]
    b = len(used_frames)
    curr, curr_pos = (rng.standard_normal((b, n, c)).astype(np.float32) for _ in range(2))

    def garbage_bank(seed):
        r = np.random.default_rng(seed)
        shape = (b, frame_slots * n + ptr_slots, m)
        return (r.standard_normal(shape) * 100).astype(np.float32), (r.standard_normal(shape) * 100).astype(np.float32)

    memory, memory_pos = garbage_bank(1)
    mask = np.zeros((b, frame_slots * n + ptr_slots), bool)
    refs = []
    for i in range(b):
        _, _, mem_i, pos_i = _inputs(rng, cfg, 1, len(used_frames[i]), len(used_ptrs[i]))
        slots = [np.arange(s * n, (s + 1) * n) for s in used_frames[i]]
        slots.append(frame_slots * n + np.asarray(used_ptrs[i]))
        idx = np.concatenate(slots)
        memory[i, idx], memory_pos[i, idx], mask[i, idx] = mem_i[0], pos_i[0], True
        refs.append(_run_official(module, curr[i:i + 1], curr_pos[i:i + 1], mem_i, pos_i, len(used_ptrs[i]), g))
    ref = np.concatenate(refs)
    ours = _run_ours(model, params, curr, curr_pos, memory, memory_pos, ptr_slots, mask)
    err = assert_parity(ours, ref, TOL, "padded + masked bank")
    print(f"padded + masked bank vs official unpadded: max abs err {err:.3g}")

    other_mem, other_pos = garbage_bank(2)
    other_mem[mask], other_pos[mask] = memory[mask], memory_pos[mask]
    again = _run_ours(model, params, curr, curr_pos, other_mem, other_pos, ptr_slots, mask)
    np.testing.assert_array_equal(again, ours)


def test_all_valid_mask_is_no_mask(tiny_cfg):
    _, params, model, cfg = _setup(tiny_cfg, 2)
    x = _inputs(np.random.default_rng(9), cfg, 2, 2, 4)
    mask = np.ones(x[2].shape[:2], bool)
    np.testing.assert_array_equal(_run_ours(model, params, *x, 4, mask), _run_ours(model, params, *x, 4))


def test_rope_table_matches_official(tiny_cfg):
    """The table recomputed from the config equals the official attributes of both attentions."""
    module, _, _, cfg = _setup(tiny_cfg, 1)
    cos, sin = tracker_rope_tables(cfg.tracker.d_model, _grid(cfg))
    layer = module.transformer.encoder.layers[0]
    for attn in (layer.self_attn, layer.cross_attn_image):
        ref = attn.freqs_cis.numpy()
        assert ref.shape == cos.shape
        np.testing.assert_allclose(np.asarray(cos), ref.real, atol=1e-6)
        np.testing.assert_allclose(np.asarray(sin), ref.imag, atol=1e-6)


def test_remat_gives_the_same_output(tiny_cfg):
    _, params, _, cfg = _setup(tiny_cfg, 2)
    cfg = copy.deepcopy(cfg)
    cfg.remat = "full"
    x = _inputs(np.random.default_rng(4), cfg, 1, 1, 4)
    model = memory_attention_from_config(cfg)
    np.testing.assert_allclose(
        _run_ours(model, params, *x, 4), _run_ours(_setup(tiny_cfg, 2)[2], params, *x, 4), atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# Conversion of the released keys, params, axes


def _full_target(full_cfg) -> dict:
    return {"tracker": {"transformer": {"encoder": nn.meta.unbox(_boxed_params(full_cfg))}}}


def test_full_size_param_count_and_dry_run_conversion(full_cfg):
    target = _full_target(full_cfg)
    shapes = target["tracker"]["transformer"]["encoder"]
    assert count_params(shapes) == FULL_PARAMS
    assert shapes["layers"]["cross_attn_image"]["key"]["kernel"].shape == (4, full_cfg.tracker.mem_dim, 1, 256)
    table = official_key_table(PREFIX)
    assert len(table) == FULL_NUM_KEYS
    params, report = convert(table, target, memory_attention_rules(full_cfg), dry_run=True, pending_parts={})
    assert sorted(report.consumed) == sorted(table) and not report.recomputed and not report.pending
    assert report.num_params == report.num_source_elements == FULL_PARAMS
    assert jax.tree_util.tree_map(lambda x: x.shape, params) == jax.tree_util.tree_map(lambda x: x.shape, target)


def test_wrong_shaped_key_is_named(full_cfg):
    table = official_key_table(PREFIX)
    key = PREFIX + "layers.2.cross_attn_image.k_proj.weight"
    table[key] = KeySpec((256, 256), np.dtype("float32"))
    with pytest.raises(ShapeMismatchError, match=rf"key {key.replace('.', '[.]')}: expected shape \(256, 64\), "
                                                 r"got \(256, 256\)"):
        convert(table, _full_target(full_cfg), memory_attention_rules(full_cfg), dry_run=True, pending_parts={})


def test_every_param_has_logical_axes(tiny_cfg):
    leaves = jax.tree_util.tree_leaves_with_path(
        _boxed_params(_cfg(tiny_cfg, 2)), is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{name} has no logical axes"
        assert len(leaf.names) == leaf.value.ndim, name
        assert (leaf.names[0] == "layers") == ("'layers'" in name), name


# --------------------------------------------------------------------------------------------
# Input errors


def test_bad_inputs(tiny_cfg):
    _, params, model, cfg = _setup(tiny_cfg, 1)
    g = _grid(cfg)
    curr, curr_pos, memory, memory_pos = _inputs(np.random.default_rng(0), cfg, 1, 1, 4)
    p = {"params": params}
    with pytest.raises(ValueError, match=r"spatial tokens must be a whole number of 256-token frames"):
        model.apply(p, curr, curr_pos, memory, memory_pos, 3)
    with pytest.raises(ValueError, match=rf"curr must have shape \(B, {g * g}, 256\)"):
        model.apply(p, curr[:, :-1], curr_pos[:, :-1], memory, memory_pos, 4)
    with pytest.raises(ValueError, match="memory_pos .* must match memory"):
        model.apply(p, curr, curr_pos, memory, memory_pos[:, :-1], 4)
    with pytest.raises(ValueError, match=r"memory_mask must be a bool \(1, 260\) array"):
        model.apply(p, curr, curr_pos, memory, memory_pos, 4, memory_mask=np.ones((1, 260), np.int32))
    with pytest.raises(TypeError, match="num_obj_ptr_tokens must be a static Python int"):
        model.apply(p, curr, curr_pos, memory, memory_pos, jnp.asarray(4))
