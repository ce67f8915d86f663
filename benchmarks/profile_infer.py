#!/usr/bin/env python
"""Where inference time goes in `Sam3ImagePredictor`: per model stage, and per XLA op kind.

    python benchmarks/profile_infer.py --config full [--top 12] [--trace_dir /tmp/sam3_trace]

Random weights (`bench_infer.random_params`; times do not depend on their values), the astronaut
photo, fp32 (or `--dtype bfloat16`: the bf16 path).
1. Stages: the image encoder (set_image) and the parts of one text prompt on the cached image
   (text encoder, geometry + fusion encoder, decoder + scoring, segmentation head for every query),
   each its own jitted function, median of 3 warm calls.
2. A `jax.profiler` trace of set_image and of one text prompt, its executed XLA ops summed by kind
   (the op name less its numeric suffix: `ynn_fusion` = matmuls through XNNPACK, `loop_fusion`
   = fused elementwise loops, `while` = loops such as the blocked attention, ...). The traces stay
   in --trace_dir for Perfetto / TensorBoard.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

RUNTIME = re.compile(r"^(\$|PjitFunction|ParseArguments|DevicePut|CommonPjRt|Handle |Allocate|Wait for|"
                     r"ThreadpoolListener|PythonRefManager|SlinkyThreadPool|TransferLiteral|Execute|ThunkExecutor)")


def op_kinds(trace_dir: str, top: int) -> list[tuple[str, float, int]]:
    """(op kind, summed ms, count) of the executed XLA ops in the newest trace under trace_dir (on a
    GPU / TPU: the kernels on the device's rows of the trace only)."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    # On an accelerator keep only the device's own rows (its kernels); on the CPU every row is the host.
    procs = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name" and "args" in e}
    device = {pid for pid, name in procs.items() if re.search(r"/device:(GPU|TPU)", name)}
    rows = None  # (pid, tid) rows counted; None = every row
    if device:
        threads = {(e["pid"], e["tid"]): e["args"].get("name", "") for e in events
                   if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in device}
        # One row per op: the "XLA Ops" row where the trace has one, else the kernel streams.
        ops = {r for r, n in threads.items() if n == "XLA Ops"}
        rows = ops or {r for r, n in threads.items() if not re.match(r"XLA Modules|Steps|Source|.*Framework", n)}
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or "dur" not in e or RUNTIME.match(name):
            continue
        if rows is not None and (e.get("pid"), e.get("tid")) not in rows:
            continue
        kind = re.sub(r"(\.(\d+|clone))+$", "", name)
        total[kind] += e["dur"] / 1e3
        count[kind] += 1
    return [(k, total[k], count[k]) for k, _ in total.most_common(top)]


def median_time(fn, *args, repeats: int = 3) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def stage_times(pred) -> dict[str, float]:
    """Seconds per stage of set_image + one text prompt, each stage jitted on its own."""
    import jax
    import jax.numpy as jnp

    from sam3_jax.formats.image import preprocess
    from sam3_jax.layers.stack import for_inference
    from sam3_jax.model.sam3_image import Sam3Image

    m, p, io = pred.model, pred._detector_params, pred._image_out
    image = jnp.asarray(preprocess(pred._image, pred.resolution)[None])
    tokens = jnp.asarray(pred._tokens(["a helmet"]))
    boxes, labels, pad = (jnp.asarray(a) for a in pred._boxes(None, None))

    def encode(mod, x):
        return mod.forward_image_for_grounding(x)

    def fusion(mod, io, text, b, lab, pad):
        fpn, pos = io["backbone_fpn"][-1], io["vision_pos_enc"][-1]
        n, h, w, c = fpn.shape
        geo, geo_mask = mod.geometry_encoder(boxes=b, box_labels=lab, box_mask=pad, img_feats=fpn, img_pos=pos)
        prompt = jnp.concatenate([text["language_features"], geo], 1)
        prompt_mask = jnp.concatenate([text["language_mask"], geo_mask], 1)
        return mod.transformer.encoder(fpn.reshape(n, h * w, c), pos.reshape(n, h * w, c), prompt, prompt_mask,
                                       self_attended=io["encoder_self_attn"]), prompt, prompt_mask

    def decode(mod, io, memory, prompt, prompt_mask):
        pos = io["vision_pos_enc"][-1]
        n, h, w, c = pos.shape
        dec = mod.transformer.decoder(memory, pos.reshape(n, h * w, c), (h, w), prompt, prompt_mask)
        return dec["hs"][-1], mod.dot_prod_scoring(dec["hs"], prompt, prompt_mask)

    def segment(mod, io, memory, prompt, prompt_mask, queries):
        return mod.segment(io["backbone_fpn"], memory, prompt, prompt_mask, queries)["pred_masks"]

    def jit(fn):
        return jax.jit(for_inference(lambda params, *a: m.apply({"params": params}, *a, method=fn)))

    times = {"image encoder (trunk + necks)": median_time(jit(encode), p, image)}
    f_text = jit(Sam3Image.forward_text)
    times["text encoder"] = median_time(f_text, p, tokens)
    text = f_text(p, tokens)
    f_fusion = jit(fusion)
    times["geometry + fusion encoder (first self-attention cached)"] = median_time(
        f_fusion, p, io, text, boxes, labels, pad)
    memory, prompt, prompt_mask = f_fusion(p, io, text, boxes, labels, pad)
    f_dec = jit(decode)
    times["decoder + scoring"] = median_time(f_dec, p, io, memory, prompt, prompt_mask)
    queries, _ = f_dec(p, io, memory, prompt, prompt_mask)
    times["segmentation head (every query)"] = median_time(jit(segment), p, io, memory, prompt, prompt_mask, queries)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--trace_dir", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype (bfloat16: params cast to bf16, the bf16 path)")
    args = ap.parse_args()

    import jax
    import skimage.data

    import bench_infer
    from sam3_jax.config import model_config
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    cfg = model_config(args.config)
    _, params = bench_infer.build_weights(cfg, 0, with_official=False)
    if args.dtype != "float32":
        cfg.dtype = args.dtype
        params = bench_infer.cast_params(params, args.dtype)
    pred = Sam3ImagePredictor(params, cfg)
    photo = skimage.data.astronaut()
    pred.set_image(photo)
    pred.predict(text="a person")  # compile
    print(f"config {args.config} ({cfg.image_size} px), {args.dtype}, {bench_infer.cpu_name()}, {bench_infer.cpu_isa()}, "
          f"jax {jax.__version__} on {jax.default_backend()}")
    print("\nstages (each jitted alone, median of 3):")
    for name, s in stage_times(pred).items():
        print(f"  {s:8.3f} s  {name}")

    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="sam3_trace_")
    cases = {"set_image": lambda: jax.block_until_ready(pred.set_image(photo) or pred._image_out),
             "one_text_prompt": lambda: pred.predict(text="a helmet")}
    for what, fn in cases.items():
        d = os.path.join(trace_dir, what)
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
        print(f"\n{what}: {dt:.2f} s under the profiler; XLA op kinds by summed time (ops run on 2 threads "
              "may overlap):")
        for kind, ms, n in op_kinds(d, args.top):
            print(f"  {ms:10.1f} ms  x{n:<6d} {kind}")
    print(f"\ntraces: {trace_dir}")


if __name__ == "__main__":
    main()
