"""The memory planner's exact figures equal the byte counts of the sharded state (jax.eval_shape)."""

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
