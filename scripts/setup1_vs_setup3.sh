#!/usr/bin/env bash
# Setup 1 vs Setup 3 on the synthetic demo (tiny SAM, CPU-sized), over seeds.
# Setup 3: pretrain the encoder (masked image modelling) on the unlabelled train+test images,
# then fine-tune (LoRA encoder + decoder); Setup 1: the same fine-tuning from the same random
# init without pretraining. Both score the test split with `sam-medft eval`.
#   scripts/setup1_vs_setup3.sh OUT_DIR [PRETRAIN_STEPS] [FINETUNE_STEPS] [SEEDS...]
# FT_BATCH: the fine-tuning batch size (default 8, as the recipe).
# SHARED_PRETRAIN=1: one pretraining (the first seed's) serves every seed's fine-tuning.
# Finished pretrainings and fine-tunings of the same step counts in OUT_DIR are reused.
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [PRETRAIN_STEPS] [FINETUNE_STEPS] [SEEDS...]}
pre=${2:-100}; ft=${3:-100}; shift $(( $# < 3 ? $# : 3 )); seeds=${*:-0 1 2}
cli="python -m sam_medft"
common="output_dir=$out train.log_with=none"
ftargs="train.batch_size=${FT_BATCH:-8}"
first=${seeds%% *}
done_steps() { python -c "import json,sys; print(json.load(open(sys.argv[1]))['steps'])" \
  "$1/train_summary.json" 2>/dev/null || echo 0; }
for s in $seeds; do
  p=$s; [ "${SHARED_PRETRAIN:-0}" = 1 ] && p=$first
  if [ "$(done_steps $out/pre_s$p)" != "$pre" ]; then
    $cli pretrain setups/setup3_pretrain $common name=pre_s$p train.seed=$p \
      train.max_steps=$pre train.eval_every=$pre train.save_every=$pre --overwrite
  fi
  for setup in setup3 setup1; do
    [ "$(done_steps $out/${setup}_s$s)" = "$ft" ] && [ -f $out/${setup}_s$s/eval/summary.json ] \
      && continue  # a finished fine-tuning of this budget is reused
    enc=$out/pre_s$p; [ $setup = setup1 ] && enc=
    $cli train setups/setup3_finetune $common name=${setup}_s$s train.seed=$s $ftargs \
      model.encoder_weights=$enc train.max_steps=$ft train.eval_every=$ft \
      train.save_every=$ft --overwrite
    $cli eval $out/${setup}_s$s > /dev/null
  done
done
python - "$out" $seeds <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
def dice(run):
    d = json.load(open(f"{out}/{run}/eval/summary.json"))
    return {v["name"]: v["dice"]["mean"] for v in d["per_class"].values()}
print("| seed | setup | " + " | ".join(["organ_a Dice", "organ_b Dice", "mean"]) + " |")
print("|---|---|---|---|---|")
means = {"setup1": [], "setup3": []}
for s in seeds:
    for setup in ("setup1", "setup3"):
        d = dice(f"{setup}_s{s}")
        m = statistics.mean(d.values()); means[setup].append(m)
        print(f"| {s} | {setup} | " + " | ".join(f"{v:.4f}" for v in d.values()) + f" | {m:.4f} |")
for setup, v in means.items():
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    print(f"| all | {setup} | | | {statistics.mean(v):.4f} +- {sd:.4f} |")
PY
