"""Optimiser: schedule equal to the official one, parameter groups, layer decay, decay mask, freezing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sam3_jax.train.optim import decay_mask, inverse_sqrt_schedule, lr_scales, make_optimizer, official_defaults


def _params(depth=4):
    z = lambda *s: jnp.zeros(s)  # noqa: E731
    return {
        "backbone": {
            "vision_backbone": {"trunk": {"patch_embed": {"kernel": z(14, 14, 3, 8)}, "pos_embed": z(1, 5, 8),
                                          "ln_pre": {"scale": z(8), "bias": z(8)},
                                          "blocks": {"mlp": {"fc1": {"kernel": z(depth, 8, 16), "bias": z(depth, 16)}}}},
                                "convs": {"0": {"conv_1x1": {"kernel": z(1, 1, 8, 8)}}}},
            "language_backbone": {"encoder": {"token_embedding": {"embedding": z(10, 8)}}},
        },
        "transformer": {"decoder": {"norm": {"scale": z(8), "bias": z(8)}}},
    }


def test_schedule_equals_official():
    sched_mod = pytest.importorskip("sam3.train.optim.schedulers")
    ref = sched_mod.InverseSquareRootParamScheduler(base_lr=1.0, warmup_steps=20, cooldown_steps=20, timescale=20)
    total = 300
    ours = inverse_sqrt_schedule(1.0, 20, 20, 20, total)
    for step in [0, 1, 10, 20, 21, 50, 150, 279, 280, 290, 299]:
        np.testing.assert_allclose(float(ours(step)), ref(step, step / total) if step else ref(0, 0.0), rtol=1e-6)


def test_groups_layer_decay_and_mask():
    cfg = ml_collections.ConfigDict(official_defaults())
    p = _params()
    s = lr_scales(p, cfg)
    base = {"vision": 2.5e-4 * 0.1, "language": 5e-5 * 0.1, "transformer": 8e-4 * 0.1}
    blocks = np.asarray(s["backbone"]["vision_backbone"]["trunk"]["blocks"]["mlp"]["fc1"]["kernel"]).ravel()
    np.testing.assert_allclose(blocks, base["vision"] * 0.9 ** np.array([4, 3, 2, 1]), rtol=1e-6)  # block k: 0.9^(4-k)
    trunk = s["backbone"]["vision_backbone"]["trunk"]
    np.testing.assert_allclose(float(trunk["patch_embed"]["kernel"].ravel()[0]), base["vision"] * 0.9**5, rtol=1e-6)
    np.testing.assert_allclose(float(trunk["pos_embed"].ravel()[0]), base["vision"], rtol=1e-6)
    np.testing.assert_allclose(float(s["backbone"]["vision_backbone"]["convs"]["0"]["conv_1x1"]["kernel"].ravel()[0]),
                               base["vision"], rtol=1e-6)
    np.testing.assert_allclose(float(s["backbone"]["language_backbone"]["encoder"]["token_embedding"]["embedding"].ravel()[0]),
                               base["language"], rtol=1e-6)
    np.testing.assert_allclose(float(s["transformer"]["decoder"]["norm"]["scale"].ravel()[0]), base["transformer"], rtol=1e-6)
    m = decay_mask(p)
    assert m["transformer"]["decoder"]["norm"]["scale"] is False and m["backbone"]["vision_backbone"]["trunk"]["ln_pre"]["bias"] is False
    assert m["backbone"]["vision_backbone"]["trunk"]["blocks"]["mlp"]["fc1"]["kernel"] is True


def test_update_is_group_lr_times_adamw_and_freezing():
    cfg = ml_collections.ConfigDict(official_defaults())
    cfg.clip_norm = 1e9
    cfg.freeze = ("text",)
    p = jax.tree_util.tree_map(lambda x: x + 1.0, _params())
    g = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 0.5), p)
    tx = make_optimizer(p, cfg, total_steps=1000)
    upd, _ = tx.update(g, tx.init(p), p)
    assert np.all(np.asarray(upd["backbone"]["language_backbone"]["encoder"]["token_embedding"]["embedding"]) == 0)
    # Step 0 of the schedule has lr 0 (linear warm-up from 0), step 1: lr 1/20 of the group lr.
    upd, _ = tx.update(g, tx.update(g, tx.init(p), p)[1], p)
    lr = 8e-4 * 0.1 / 20
    # AdamW direction after two equal gradients is 1 (bias-corrected), plus decay 0.1 * p = 0.1 on kernels.
    np.testing.assert_allclose(np.asarray(upd["transformer"]["decoder"]["norm"]["scale"]), -lr * 1.0, rtol=1e-3)
    k = np.asarray(upd["backbone"]["vision_backbone"]["convs"]["0"]["conv_1x1"]["kernel"])
    np.testing.assert_allclose(k, -(2.5e-4 * 0.1 / 20) * (1.0 + 0.1 * 1.0), rtol=1e-3)
