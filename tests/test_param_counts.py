"""Full-config parameter counts equal the official ones, without allocating weights."""

import flax.linen as nn
import jax

from sam3_jax.convert import backbone_target_shapes
from sam3_jax.layers.core import count_params


def test_full_config_parameter_counts(full_cfg):
    shapes = backbone_target_shapes(full_cfg)["backbone"]
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(shapes))
    assert count_params(shapes["vision_backbone"]["trunk"]) == 446_237_696
    assert count_params(shapes["vision_backbone"]["convs"]) == 7_802_112
    assert count_params(shapes["vision_backbone"]["sam2_convs"]) == 7_802_112
    assert count_params(shapes["language_backbone"]) == 353_724_672


def test_every_parameter_has_logical_axis_names(tiny_cfg):
    import jax.numpy as jnp

    from sam3_jax.model.backbone import VLBackbone

    s = tiny_cfg.image_size
    boxed = jax.eval_shape(
        VLBackbone(tiny_cfg).init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((1, 32), jnp.int32),
    )["params"]
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{jax.tree_util.keystr(path)} has no logical axes"
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
    stacked = [leaf for _, leaf in leaves if "layers" in leaf.names]
    assert stacked and all(leaf.names[0] == "layers" for leaf in stacked)


def test_full_image_model_parameter_count(full_cfg):
    """840,509,750 = the official image model without the tracker neck; with it, + 7,802,112."""
    from sam3_jax.model.sam3_image import image_model_target_shapes

    assert count_params(image_model_target_shapes(full_cfg)) == 840_509_750 + 7_802_112
    cfg = full_cfg.copy_and_resolve_references()
    cfg.neck.add_sam2_neck = False
    shapes = image_model_target_shapes(cfg)
    assert count_params(shapes) == 840_509_750
    parts = {k: count_params(v) for k, v in shapes.items()}
    assert parts["geometry_encoder"] == 8_215_808
    assert parts["dot_prod_scoring"] == 1_182_976
    assert parts["segmentation_head"] == 2_298_881
    assert count_params(shapes["transformer"]["encoder"]) == 9_472_512
    assert count_params(shapes["transformer"]["decoder"]) == 11_575_093


def test_image_model_logical_axis_names(tiny_cfg):
    import jax.numpy as jnp

    from sam3_jax.model.sam3_image import Sam3Image

    s = tiny_cfg.image_size
    boxed = jax.eval_shape(
        Sam3Image(tiny_cfg).init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((1, 32), jnp.int32),
        jax.ShapeDtypeStruct((1, 1, 4), jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32),
        jax.ShapeDtypeStruct((1, 1), jnp.bool_),
    )["params"]
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{jax.tree_util.keystr(path)} has no logical axes"
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
