#!/usr/bin/env bash
# The GPU comparison of issue 6, as one prepared command for a lent accelerator (no TensorFlow):
# DeepLabV3-ResNet101 at 513², per-device batch 8 and 16, float32 and bfloat16, train and eval,
# against torchvision (channels_last; AMP for bfloat16), each in alternating rounds.
#
#   OUT=/some/dir bash experiments/benchmarks/gpu_suite.sh [train|eval|all]
#
# MODEL, SIZE, BATCHES, DTYPES, STEPS and ROUNDS override the defaults (the tests run it on a CPU
# with a tiny model this way).
# Appends one JSON object per configuration to $OUT/gpu_suite.jsonl (the step benchmarks' --json
# line plus "cmd") and their tables to $OUT/gpu_suite.log, then prints a summary table. Train runs
# first: they are what the issue's targets (>= 1.5x torchvision, MFU >= 45% in bfloat16) are
# about. Budget on an H200: roughly a minute per configuration, most of it compilation.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/gpu_suite}"
mkdir -p "$out"
modes="${1:-all}"
model="${MODEL:-deeplabv3_resnet101}"
size="${SIZE:-513}"
batches="${BATCHES:-8 16}"
dtypes="${DTYPES:-bfloat16 float32}"
[ "$modes" = all ] && modes="train eval"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$out/gpu_suite.log" 2>&1 || true
python -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)" \
  >>"$out/gpu_suite.log" 2>&1
for mode in $modes; do
  for dtype in $dtypes; do
    for batch in $batches; do
      cmd="python -m experiments.benchmarks.${mode}_step --model=$model --size=$size --batch=$batch --dtype=$dtype --compare=torchvision --steps=${STEPS:-5} --rounds=${ROUNDS:-3} --json"
      echo "== $cmd" | tee -a "$out/gpu_suite.log"
      if $cmd >"$out/last.txt" 2>>"$out/gpu_suite.log"; then
        grep -v '^{' "$out/last.txt" | tee -a "$out/gpu_suite.log"
        tail -1 "$out/last.txt" | python -c "import json, sys; d = json.loads(sys.stdin.read()); d['cmd'] = sys.argv[1]; print(json.dumps(d, sort_keys=True))" "$cmd" >>"$out/gpu_suite.jsonl"
      else
        echo "FAILED (see $out/gpu_suite.log)" | tee -a "$out/gpu_suite.log"
      fi
    done
  done
done
rm -f "$out/last.txt"
python - "$out/gpu_suite.jsonl" <<'EOF'
import json, sys
print("| mode | dtype | batch | segjax img/s | torchvision img/s | ratio | MFU | compile s |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    d = json.loads(line)
    tv = d.get("torchvision_img_per_s")
    print(f"| {d['mode']} | {d['dtype']} | {d['batch']} | {d['segjax_img_per_s']:.1f} | "
          f"{tv if tv is None else round(tv, 1)} | {d['ratio'] if d['ratio'] is None else round(d['ratio'], 2)} | "
          f"{100 * d['mfu']:.0f}% | {d['compile_s']:.0f} |")
EOF
