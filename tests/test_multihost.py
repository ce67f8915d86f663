"""Two local processes (4 CPU devices each, jax.distributed on 127.0.0.1 with gloo) train sharded on
a global batch and save an Orbax checkpoint; this single process restores it onto other meshes."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import portpicker
import pytest

from sam3_jax.parallel import checkpoint
from sam3_jax.parallel.mesh import logical_rules, make_mesh, param_shardings
from sam3_jax.parallel.state import abstract_params, abstract_train_state, train_state_shardings, unboxed_abstract
from tests.test_sharding import B, mesh_test_config


def eval_setup(cfg):
    """The experiment config plus a data block for the Evaluator, and 11 synthetic validation pairs."""
    from sam3_jax.train.inputs import data_config
    from sam3_jax.data.synthetic import SyntheticSource

    cfg = cfg.copy_and_resolve_references()
    cfg.data = data_config(canvas=64)
    return cfg, SyntheticSource("val", num_examples=11, canvas=64, max_instances=8, max_prompt_boxes=2)


def _target(mesh, cfg):
    from sam3_jax.model.sam3_image import Sam3Image

    s = cfg.model.image_size
    specs = [jax.ShapeDtypeStruct((B, s, s, 3), np.float32), jax.ShapeDtypeStruct((B, 32), np.int32),
             jax.ShapeDtypeStruct((B, 2, 4), np.float32), jax.ShapeDtypeStruct((B, 2), np.int32),
             jax.ShapeDtypeStruct((B, 2), np.bool_)]
    rules = logical_rules(cfg)
    boxed = abstract_params(Sam3Image(cfg.model), specs, mesh, rules)
    p_sh = param_shardings(boxed, mesh, rules)
    params = unboxed_abstract(boxed)
    tx = optax.sgd(1e-2)
    return abstract_train_state(params, tx, train_state_shardings(tx, params, p_sh, mesh))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, repo_root):
    workdir = tmp_path_factory.mktemp("multihost")
    port = portpicker.pick_unused_port()
    env = dict(os.environ, PYTHONPATH=repo_root)
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen([sys.executable, os.path.join(repo_root, "tests", "multihost_worker.py"),
                          "--process_id", str(i), "--port", str(port), "--workdir", str(workdir)],
                         cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return workdir


@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 1, 1)])
def test_restore_two_process_checkpoint_on_other_meshes(two_process_run, shape):
    cfg = mesh_test_config()
    n = int(np.prod(shape))
    mesh = make_mesh(ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), shape))), jax.devices()[:n])
    state = checkpoint.restore(checkpoint.manager(str(two_process_run / "ckpt")), _target(mesh, cfg))
    assert int(state["step"]) == 2
    saved = np.load(two_process_run / "params.npz")
    leaves = jax.tree_util.tree_leaves_with_path(state["params"])
    assert len(leaves) == len(saved.files)
    for path, leaf in leaves:
        assert leaf.sharding.mesh.shape == mesh.shape
        np.testing.assert_array_equal(np.asarray(leaf), saved[jax.tree_util.keystr(path)])
    losses = json.loads((two_process_run / "losses.json").read_text())
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_two_process_evaluation_equals_one_process(two_process_run):
    """The evaluation inside train.py on 2 processes (each reading its own padded shard) gathers the
    same predictions, in the same order, as one process evaluating the restored params alone."""
    from sam3_jax.model.sam3_image import Sam3Image
    from sam3_jax.train.evaluator import Evaluator

    cfg = mesh_test_config()
    mesh = make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
    state = checkpoint.restore(checkpoint.manager(str(two_process_run / "ckpt")), _target(mesh, cfg))
    cfg_eval, val = eval_setup(cfg)
    ev = Evaluator(Sam3Image(cfg.model), cfg_eval, mesh, logical_rules(cfg), None, (val, None), batch=4)
    rows, local = ev.predict(state["params"], val)
    assert len(rows) == len(local) == 11
    got = np.load(two_process_run / "eval.npz")
    assert sorted(got["pair_id"].tolist()) == list(range(11))
    order = np.argsort(got["pair_id"])
    ours = {int(r[0]["pair_id"][r[1]]): r for r in rows}
    np.testing.assert_allclose(got["scores"][order], np.stack([ours[i][2] for i in range(11)]), atol=1e-5)
    np.testing.assert_allclose(got["masks"][order], np.stack([ours[i][4] for i in range(11)]), atol=1e-3)
    two = json.loads((two_process_run / "eval.json").read_text())
    one = ev(state["params"])
    assert set(two) == set(one) and all(abs(two[k] - one[k]) < 1e-6 for k in one), (two, one)
