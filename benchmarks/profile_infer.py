#!/usr/bin/env python
"""Where inference time goes: a `jax.profiler` trace of `Sam3ImagePredictor` (set_image, then one
text prompt on the cached image), summarised as the XLA ops with the most time.

    python benchmarks/profile_infer.py --config full --top 15 [--trace_dir /tmp/sam3_trace]

Flax-initialised random weights (the time does not depend on their values), the astronaut photo,
fp32. The trace (Perfetto / TensorBoard) stays in --trace_dir for a closer look; the table sums the
trace's device-side op events by name (an op inside a loop counts once per iteration).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile
import time


def summarise(trace_dir: str, top: int) -> list[tuple[str, float, int]]:
    """(op name, total ms, count) of the longest ops in the newest perfetto trace under trace_dir."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    total, count = collections.Counter(), collections.Counter()
    threads = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e.get("name", "")
        # Host-side Python / runtime frames are not ops; keep XLA's executed ops (thunks).
        if name.startswith(("$", "PjitFunction", "PjRt", "Thunk", "ThunkExecutor")) or " " in name:
            continue
        total[name] += e["dur"] / 1e3
        count[name] += 1
    return [(n, total[n], count[n]) for n, _ in total.most_common(top)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--trace_dir", default=None)
    args = ap.parse_args()

    import jax
    import skimage.data

    from sam3_jax.config import model_config

    import bench_infer

    cfg = model_config(args.config)
    _, params = bench_infer.build_weights(cfg, 0, with_official=False)
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    pred = Sam3ImagePredictor(params, cfg)
    photo = skimage.data.astronaut()
    pred.set_image(photo)
    pred.predict(text="a person")  # compile both paths
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="sam3_trace_")
    for what, fn in (("set_image", lambda: pred.set_image(photo)), ("+1 text prompt", lambda: pred.predict(text="a helmet"))):
        with jax.profiler.trace(os.path.join(trace_dir, what.replace(" ", "_").replace("+", "")),
                                create_perfetto_trace=True):
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
        rows = summarise(os.path.join(trace_dir, what.replace(" ", "_").replace("+", "")), args.top)
        print(f"\n{what}: {dt:.2f} s (config {args.config}); top ops by summed time:")
        for name, ms, n in rows:
            print(f"  {ms:9.1f} ms  {100 * ms / 1e3 / dt:5.1f} %  x{n:<6d} {name}")
    print(f"\ntrace: {trace_dir}")


if __name__ == "__main__":
    main()
