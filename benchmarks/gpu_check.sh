#!/usr/bin/env bash
# The GPU checks of issue 17 as one prepared script (run on a GPU machine from the repository root):
#   bash benchmarks/gpu_check.sh infer   # full-size bf16 inference (automatic = cuDNN, and XLA attention)
#   bash benchmarks/gpu_check.sh train [REMAT:BATCH ...]   # full-size bf16 train step: MFU, top ops; then
#                                                          # the GPU-only tests
# Python packages the GPU image lacks travel as wheels in .whl/ (README, Inference speed).
# Logs go to $OUT (or ./gpu_out) as they are made.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, jaxlib; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
case "${1:-infer}" in
  infer)
    timeout 200 python3 benchmarks/bench_infer.py --config full --dtype bfloat16 --no_official --repeats 10 \
      --profile /tmp/prof_infer --json "$OUT/infer_bf16.json" 2>&1 | tee "$OUT/infer_bf16.log"
    timeout 150 python3 benchmarks/bench_infer.py --config full --dtype bfloat16 --no_official --repeats 10 \
      --attention xla --json "$OUT/infer_bf16_xla.json" 2>&1 | tee "$OUT/infer_bf16_xla.log"
    ;;
  train)
    shift
    for spec in ${@:-dots:8 none:4}; do
      remat=${spec%%:*}; batch=${spec##*:}
      timeout 200 python3 benchmarks/bench_train.py --configs full --dtype bfloat16 \
        --remat "$remat" --batch "$batch" --steps 5 --fast_init --profile /tmp/prof_train 2>&1 | tee "$OUT/train_${remat}_b${batch}.log"
    done
    timeout 150 python3 -m pytest -q -p no:cacheprovider -n 0 tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/test_gpu.log"
    ;;
esac
