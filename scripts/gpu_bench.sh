#!/usr/bin/env bash
# The issue-8 target table on one GPU: SAM ViT-B, 1024 x 1024, batch 4, 2 classes, random
# weights; every row plain vs fast attention, eager vs regional torch.compile.
# One JSON record per run goes to $OUT/bench.jsonl (stderr of each run to $OUT/bench.log).
#
#   scripts/gpu_bench.sh                   # on the GPU machine (~8 min on an H100)
#   SMALL=1 scripts/gpu_bench.sh           # dry run anywhere: 128 px, 2 steps, no compile
#   BENCH_ARGS="--image-size 256 --batch 2 --steps 4 --warmup 1" scripts/gpu_bench.sh
#                                          # the same rows at a size of your choice (CPU table)
#
# Env: OUT (default runs/bench), BUDGET_S (stop starting runs after this many seconds,
# default 420), RUN_TIMEOUT_S (per run, default 120), COMPILE=0/1 (compile rows; default 1,
# 0 when SMALL=1 or BENCH_ARGS is set), EPOCH_WORKERS (loader workers of the epoch row,
# default 8), PYTHON (default python3). If a folder .whl/ holds wheels (e.g. pydantic
# for a bare image), they are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
JSONL="$OUT/bench.jsonl"
LOG="$OUT/bench.log"
: >"$JSONL"
: >"$LOG"
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-420}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-120}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONWARNINGS=ignore

if [ -n "${BENCH_ARGS:-}" ]; then
  read -r -a SIZE <<<"$BENCH_ARGS"
  COMPILE=${COMPILE:-0}
elif [ "${SMALL:-0}" = 1 ]; then
  SIZE=(--image-size 128 --batch 2 --steps 2 --warmup 1)
  COMPILE=${COMPILE:-0}
else
  SIZE=(--batch 4 --steps 20 --warmup 5)
  COMPILE=${COMPILE:-1}
fi

{
  date -u +"start %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} >>"$LOG" 2>&1

START=$(date +%s)
n_ok=0
n_fail=0
n_skip=0

# bench LABEL RECIPE [bench options...]: one run, its JSON record tagged with LABEL
bench() {
  local label=$1 recipe=$2
  shift 2
  if [ $(($(date +%s) - START)) -ge "$BUDGET_S" ]; then
    echo "skip $label (budget of ${BUDGET_S}s spent)" | tee -a "$LOG"
    n_skip=$((n_skip + 1))
    return
  fi
  local t0=$(date +%s) line
  echo "== $label: $recipe $*" >>"$LOG"
  line=$(timeout "$RUN_TIMEOUT_S" $PY -m sam_medft bench "$recipe" "${SIZE[@]}" --json "$@" 2>>"$LOG" | tail -n 1)
  if [ -n "$line" ] && [ "${line:0:1}" = "{" ]; then
    echo "{\"label\": \"$label\", ${line:1}" >>"$JSONL"
    n_ok=$((n_ok + 1))
    echo "ok   $label ($(($(date +%s) - t0))s)"
  else
    n_fail=$((n_fail + 1))
    echo "FAIL $label ($(($(date +%s) - t0))s), see $LOG"
  fi
}

R=sam-vit-base
# eager rows first (most important), then the compiled ones
for attn in plain fast; do
  bench "lora_encdec/$attn" $R/lora_encdec --$attn
done
for attn in plain fast; do
  bench "adapter_encdec/$attn" $R/adapter_encdec --$attn
  bench "vanilla_encdec/$attn" $R/vanilla_encdec --$attn
  bench "lora_decoder/$attn" $R/lora_decoder --$attn
  bench "predict/$attn" $R/lora_encdec --mode predict --$attn
done
bench "lora_decoder/cached" $R/lora_decoder --mode decoder-cached
bench "lora_encdec/epoch" $R/lora_encdec --mode epoch --fast --workers "${EPOCH_WORKERS:-8}"
bench "lora_encdec/fast-unpadded-v" $R/lora_encdec --fast --pad-value off
if [ "$COMPILE" = 1 ]; then
  for attn in fast plain; do
    bench "lora_encdec/$attn+compile" $R/lora_encdec --$attn --compile
  done
  for attn in fast plain; do
    bench "adapter_encdec/$attn+compile" $R/adapter_encdec --$attn --compile
    bench "vanilla_encdec/$attn+compile" $R/vanilla_encdec --$attn --compile
    bench "predict/$attn+compile" $R/lora_encdec --mode predict --$attn --compile
  done
fi

echo "done: $n_ok ok, $n_fail failed, $n_skip skipped in $(($(date +%s) - START))s -> $JSONL" | tee -a "$LOG"
# a compact table of what was measured
$PY - "$JSONL" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'run':34} {'img/s':>8} {'median ms':>10} {'peak GiB':>9}  end-to-end")
for r in rows:
    mem = r["peak_gpu_mem_gib"]
    mem = f"{mem:9.2f}" if mem is not None else f"{r['peak_rss_mib'] / 1024:8.2f}R"
    e = r.get("epoch")
    e = f"  {e['images_per_s']:.2f} img/s ({e['ratio']:.2f} x step)" if e else ""
    print(f"{r['label']:34} {r['images_per_s']:8.2f} {r['step_median_s'] * 1000:10.1f} {mem}{e}")
EOF
[ "$n_fail" = 0 ]
