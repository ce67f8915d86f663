#!/usr/bin/env python
"""Train-step time, throughput and MFU of the SAM 3 image model on the machine at hand.

Times the real training step of `train.py` (forward, SAM 3 matcher and losses, backward, AdamW with the
official parameter groups, one jit, on the config's mesh over all local devices) on one fixed batch
from the synthetic source, resized to the model's resolution, for each requested config:

    python benchmarks/bench_train.py                                   # tiny (224 px) and full (1008 px)
    python benchmarks/bench_train.py --configs tiny --batch 8 --steps 20
    python benchmarks/bench_train.py --configs full --dtype bfloat16 --remat dots   # cuDNN attention where it applies
    python benchmarks/bench_train.py --configs tiny --profile /tmp/train_trace   # + top ops of one step

Prints compile seconds, the median step time over `--steps` timed steps (after 2 warm-up steps),
examples per second, the model FLOPs of one step and, where a GPU is present, the MFU against the
chip's dense bf16 peak (the usual convention; fp32 steps on a Hopper GPU run their matmuls as TF32 at
half that peak, so their MFU is at most 50 %).

Model FLOPs = 3 x the forward's matmul and convolution FLOPs, counted on the forward's jaxpr with every
scanned block multiplied by its trip count (XLA's own cost analysis counts a loop body once, which
undercounts a scanned 32-block trunk ~30x); rematerialised recomputation is not counted, as usual for MFU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

# dense bf16 tensor-core peaks (FLOP/s) by device kind substring
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12}


def peak_flops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for k, v in PEAKS.items():
        if k in kind:
            return v
    return None


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for j in (v if isinstance(v, (list, tuple)) else (v,)):
            if hasattr(j, "eqns"):
                yield j
            elif hasattr(j, "jaxpr") and hasattr(j.jaxpr, "eqns"):
                yield j.jaxpr


def jaxpr_flops(jaxpr, branch_counts: dict | None = None, _scan_len: int = 1) -> float:
    """2 x multiply-adds of every dot_general and convolution; a scan counts its body times its length.

    A `cond` inside a scan of length L takes branch b on branch_counts[L][b] of the L iterations when
    given (the ViT: windowed on depth - #global blocks, global on the rest), else the costliest branch.
    """
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[i] for i in lc])
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec
            dil = np.prod(eqn.params.get("lhs_dilation") or (1,))  # transposed conv: skip the inserted zeros
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * rhs[spec[1]] * np.prod([rhs[i] for i in spec[2:]]) / dil
        elif name == "cond":
            per = [jaxpr_flops(b.jaxpr, branch_counts) for b in eqn.params["branches"]]
            counts = (branch_counts or {}).get(_scan_len)
            total += (sum(c * f for c, f in zip(counts, per)) / _scan_len) if counts else max(per)
        elif name == "scan":
            n = eqn.params["length"]
            total += n * sum(jaxpr_flops(j, branch_counts, n) for j in _sub_jaxprs(eqn))
        else:
            total += sum(jaxpr_flops(j, branch_counts, _scan_len) for j in _sub_jaxprs(eqn))
    return total


def forward_flops(model, params, batch, model_cfg) -> float:
    """Matmul + conv FLOPs of one forward pass over `batch` (the XLA attention path is counted)."""
    from sam3_jax.train.step import MODEL_INPUTS

    shapes = [jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype) for k in MODEL_INPUTS]
    p = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    closed = jax.make_jaxpr(lambda p, *x: model.apply({"params": p}, *x))(p, *shapes)
    v = model_cfg.vit
    n_global = len(v.global_blocks)
    return jaxpr_flops(closed.jaxpr, {v.depth: (v.depth - n_global, n_global)})


def build(variant: str, batch: int, dtype: str, remat: str, attention: str | None, loss_masks: bool,
          fast_init: bool = False):
    import importlib.util
    import os

    import ml_collections

    from sam3_jax.data.pipeline import PipelineConfig, make_iterator
    from sam3_jax.data.synthetic import SyntheticSource
    from sam3_jax.model.sam3_image import Sam3Image
    from sam3_jax.parallel.mesh import batch_sharding, logical_rules, make_mesh
    from sam3_jax.parallel.state import init_params, init_train_state
    from sam3_jax.train.inputs import flatten_batch, input_specs, mask_size
    from sam3_jax.train.loop import make_loss_fn
    from sam3_jax.train.optim import make_optimizer, official_defaults
    from sam3_jax.train.step import make_train_step

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "sam3.py")
    spec = importlib.util.spec_from_file_location("sam3_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config(variant)
    cfg.model.update(dtype=dtype, remat=remat, attention_impl=attention)
    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg)
    model = Sam3Image(cfg.model)
    m = cfg.model
    pc = PipelineConfig(resolution=m.image_size, mask_size=mask_size(m), batch_size=batch, augment=False,
                        shuffle=False, exact_resize=False, context_length=m.text.context_length)
    src = SyntheticSource("val", num_examples=batch, canvas=64, max_instances=8)
    host = flatten_batch(next(make_iterator(src, pc)))
    if fast_init:  # random N(0, 0.02^2) draws straight into the shardings: no compile of the model's init
        from bench_infer import random_params

        from sam3_jax.parallel.state import abstract_params_and_shardings

        abstract, p_sh = abstract_params_and_shardings(model, input_specs(host), mesh, rules)
        params = random_params(abstract, 0, p_sh)
    else:
        params, p_sh = init_params(model, jax.random.key(0), input_specs(host), mesh, rules)
    tx = make_optimizer(params, ml_collections.ConfigDict(official_defaults()), 10_000)
    state, s_sh = init_train_state(params, p_sh, tx, mesh)
    b_sh = {k: batch_sharding(mesh, v.ndim, rules) for k, v in host.items()}
    loss = ml_collections.ConfigDict(dict(use_masks=loss_masks, use_semantic_seg=loss_masks))
    step = make_train_step(model, tx, make_loss_fn(loss), mesh, rules, s_sh, b_sh)
    gbatch = {k: jax.device_put(v, b_sh[k]) for k, v in host.items()}
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    counting = cfg.model.copy_and_resolve_references()  # (the step's model keeps its own config)
    counting.attention_impl = "xla"  # count FLOPs on the XLA attention path (a fused kernel is opaque)
    flops = 3.0 * forward_flops(Sam3Image(counting), params, host, counting)
    return step, state, gbatch, n_params, flops


def bench(variant, batch, steps, dtype, remat, attention, loss_masks=True, profile=None, top=15, fast_init=False):
    step, state, gbatch, n_params, flops = build(variant, batch, dtype, remat, attention, loss_masks, fast_init)
    t0 = time.perf_counter()
    step.lower(state, gbatch).compile()
    t_compile = time.perf_counter() - t0
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        state, metrics = step(state, gbatch)
        jax.block_until_ready(metrics["loss"])
        if i >= 2:
            times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    n_dev = jax.device_count()
    line = (f"{variant:5s} {dtype:8s} remat={remat:4s} attn={attention or 'auto':5s} batch {batch:3d} "
            f"params {n_params / 1e6:7.1f} M  compile {t_compile:6.1f} s  step {dt * 1e3:8.1f} ms "
            f"(min {min(times) * 1e3:.1f})  {batch / dt:8.2f} img/s  {flops / 1e12:8.2f} TFLOP/step")
    peak = peak_flops(jax.devices()[0]) if jax.default_backend() == "gpu" else None
    if peak:
        line += f"  {flops / dt / 1e12:7.1f} TFLOP/s  MFU {100 * flops / dt / (peak * n_dev):5.1f} %"
    print(line, flush=True)
    if profile:
        import os

        from profile_infer import op_kinds

        d = os.path.join(profile, f"{variant}_{dtype}_{remat}_{attention or 'auto'}_b{batch}")
        with jax.profiler.trace(d):
            state, metrics = step(state, gbatch)
            jax.block_until_ready(metrics["loss"])
        ops = op_kinds(d, top)
        total = sum(ms for _, ms, _ in op_kinds(d, 10_000))
        print(f"  top ops of one step (summed kernel time {total:.1f} ms; trace in {d}):")
        for kind, ms, n in ops:
            print(f"    {ms:9.2f} ms {100 * ms / total:5.1f} %  x{n:<5d} {kind}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,full", help="comma list of configs/sam3.py variants")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: tiny 8, full 1 per device)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
    ap.add_argument("--remat", default=None, help="none|full|dots (default: tiny none, full full)")
    ap.add_argument("--attention", default=None, help="None = the automatic choice (cuDNN for bf16 on a GPU where it applies), xla, cudnn")
    ap.add_argument("--matmul_precision", default="default")
    ap.add_argument("--profile", default=None, metavar="DIR", help="trace one more step into DIR, print the top ops")
    ap.add_argument("--fast_init", action="store_true",
                    help="random N(0, 0.02^2) params instead of the model's init (saves its compile; times only)")
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    dev = jax.devices()[0]
    print(f"backend {jax.default_backend()}, {jax.device_count()} x {getattr(dev, 'device_kind', dev.platform)}, "
          f"jax {jax.__version__}, matmul precision {args.matmul_precision}")
    for variant in args.configs.split(","):
        batch = args.batch or (8 if variant == "tiny" else jax.device_count())
        remat = args.remat or ("none" if variant == "tiny" else "full")
        bench(variant, batch, args.steps, args.dtype, remat, args.attention, profile=args.profile,
              fast_init=args.fast_init)


if __name__ == "__main__":
    main()
