"""One process of the two-process test (not collected by pytest; started by test_multihost.py).

Each process owns 4 CPU devices; `jax.distributed.initialize` on 127.0.0.1 (gloo collectives)
joins them into 8 global devices. The processes build a (2, 2, 2) mesh, initialise the mesh-test model
sharded, feed each its own half of a global batch, run train steps, and save an Orbax checkpoint
(each process writes its own shards). Process 0 also writes the gathered params and the losses.
Then both evaluate the trained params on 11 synthetic validation pairs (each process reads its own
shard, padded), and process 0 writes the gathered predictions and metrics.
"""

import argparse
import json
import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_default_matmul_precision", "highest")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--process_id", type=int, required=True)
    ap.add_argument("--num_processes", type=int, default=2)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()

    from sam3_jax.parallel.distributed import initialize, is_main_process

    initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id, timeout_s=120)
    import ml_collections
    import numpy as np
    import optax
    from jax.experimental import multihost_utils

    from sam3_jax.model.sam3_image import Sam3Image
    from sam3_jax.parallel import checkpoint
    from sam3_jax.parallel.mesh import batch_sharding, logical_rules, make_mesh
    from sam3_jax.parallel.state import init_params, init_train_state
    from sam3_jax.train.step import make_train_step
    from tests.test_sharding import B, mesh_test_config, surrogate_loss

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    cfg = mesh_test_config()
    model = Sam3Image(cfg.model)
    mesh = make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    rules = logical_rules(cfg)
    s = cfg.model.image_size
    specs = [jax.ShapeDtypeStruct((B, s, s, 3), np.float32), jax.ShapeDtypeStruct((B, 32), np.int32),
             jax.ShapeDtypeStruct((B, 2, 4), np.float32), jax.ShapeDtypeStruct((B, 2), np.int32),
             jax.ShapeDtypeStruct((B, 2), np.bool_)]
    tx = optax.sgd(1e-2)
    params, p_sh = init_params(model, jax.random.key(0), specs, mesh, rules)
    state, s_sh = init_train_state(params, p_sh, tx, mesh)

    # The global batch is the same on every run; each process materialises only its own rows.
    rng = np.random.default_rng(0)
    full = {
        "images": rng.standard_normal((B, s, s, 3)).astype(np.float32),
        "tokens": rng.integers(1, 49000, (B, 32)).astype(np.int32),
        "boxes": rng.uniform(0.2, 0.4, (B, 2, 4)).astype(np.float32),
        "box_labels": np.ones((B, 2), np.int32),
        "box_mask": np.zeros((B, 2), bool),
    }
    per = B // jax.process_count()
    rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
    b_sh = {k: batch_sharding(mesh, v.ndim, rules) for k, v in full.items()}
    batch = {k: jax.make_array_from_process_local_data(b_sh[k], v[rows], v.shape) for k, v in full.items()}
    step = make_train_step(model, tx, surrogate_loss, mesh, rules, s_sh, b_sh)
    losses = []
    for _ in range(args.steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    mngr = checkpoint.manager(os.path.join(args.workdir, "ckpt"), async_save=False)
    checkpoint.save(mngr, args.steps, state)
    mngr.wait_until_finished()
    gathered = multihost_utils.process_allgather(state["params"], tiled=True)
    if is_main_process():
        flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(gathered)}
        np.savez(os.path.join(args.workdir, "params.npz"), **flat)
        with open(os.path.join(args.workdir, "losses.json"), "w") as f:
            json.dump(losses, f)
    from sam3_jax.train.evaluator import Evaluator
    from tests.test_multihost import eval_setup

    cfg_eval, val = eval_setup(cfg)
    ev = Evaluator(model, cfg_eval, mesh, rules, p_sh, (val, None), batch=4)
    rows, local = ev.predict(state["params"], val)
    metrics = ev(state["params"])
    assert len(local) in (5, 6) and len(rows) == 11
    if is_main_process():
        np.savez(os.path.join(args.workdir, "eval.npz"), pair_id=np.array([int(r[0]["pair_id"][r[1]]) for r in rows]),
                 scores=np.stack([r[2] for r in rows]), masks=np.stack([r[4] for r in rows]))
        with open(os.path.join(args.workdir, "eval.json"), "w") as f:
            json.dump(metrics, f)
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main()
