#!/usr/bin/env bash
# GPU acceptance check for frugal-trainer, under 8 minutes on one H200 (any recent NVIDIA GPU
# with torch 2.11 works). Run from the repository root on a machine with a GPU:
#
#   bench/gpu-check.sh [path/to/frugal-trainer] [torch/lib dir]
#
# Measures, and prints as JSON lines plus a markdown table for docs/benchmarks.md:
#   1. bf16 tokens/s and MFU of a GPT-2 124M-shaped model (frugal-trainer)
#   2. the same model, batch and precision in PyTorch eager (bench/torch_reference.py) → ratio
#   3. fp16 with dynamic loss scaling (skipped steps, final scale, loss)
#   4. dense vs sliding-window attention at a long context
#   5. fine-grained MoE vs dense at equal active FLOPs (tokens/s)
#   6. peak GPU memory (nvidia-smi) against the planner's estimate
#   7. 2 replicas × 2 pipeline stages of the same model (all four ranks on the one GPU; the
#      replicas' ring through host memory): tokens/s against one rank, and the all-reduce's share
#   8. the economics pair (examples/economics/, docs/benchmarks.md "The claim, measured") at a
#      GPU-sized shape, one seed each, to a bits-per-byte target within 100 s each, printed as
#      the same table as on the CPU (frugal-trainer report --seeds --baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-}
if [ -z "$BIN" ]; then
  # shellcheck disable=SC1091
  source scripts/env.sh
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} cargo build --release -p frugal-trainer
  BIN=${CARGO_TARGET_DIR:-target}/release/frugal-trainer
fi
if [ -n "${2:-}" ]; then export LD_LIBRARY_PATH="$2${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
PY=${PYTHON:-$(command -v python3)}
[ -x "${FRUGAL_VENV:-.venv}/bin/python" ] && PY=${FRUGAL_VENV:-.venv}/bin/python
OUT=${OUT:-$(mktemp -d)}
DATA=${FRUGAL_GPU_DATA:-data/tinyshakespeare.txt}
echo "writing results under $OUT" >&2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >&2

# A job file for each case (model and data vary; everything else is shared).
job() { # name steps precision model-yaml attention-yaml moe-yaml batch micro [stages replicas]
  cat > "$OUT/$1.yaml" <<YAML
apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata: {name: $1}
spec:
  model:
    $4
    sparsity: {attention: $5 $6}
  data:
    source: {type: Text, text: {path: $DATA}}
  training:
    duration: {type: Steps, steps: $2}
    batchSize: $7
    precision: $3
    optimizer: {type: adamw, learningRate: 0.0006}
    schedule: {type: cosine, warmupSteps: 10}
    evalInterval: 100000
    evalBatches: 4
    checkpointInterval: 100000
    logInterval: 10
  parallelism: {microBatches: $8, pipelineStages: ${9:-1}, dataParallel: ${10:-1}}
  resources: {device: GPU, gpuType: H200}
YAML
}
GPT2='type: Custom
    custom: {layers: 12, dModel: 768, heads: 12, seqLen: 1024, vocabSize: 257, positions: learned, bias: true}'
LONG='type: Custom
    custom: {layers: 12, dModel: 768, heads: 12, seqLen: 8192, vocabSize: 257, positions: rotary}'
DENSE='{type: Dense}'
MOE=', moe: {experts: 16, topK: 3, sharedExperts: 1, expertHidden: 768, everyNLayers: 1}'

train() { # name → summary JSON line; peak memory sampled by nvidia-smi meanwhile
  local name=$1
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$name.mem" &
  local smi=$!
  timeout 150 "$BIN" train "$OUT/$name.yaml" --json --device cuda --checkpoint-dir "$OUT/ck-$name" > "$OUT/$name.jsonl" || true
  kill $smi 2>/dev/null || true
  local peak; peak=$(sort -n "$OUT/$name.mem" | tail -1)
  local summary; summary=$(grep '"event":"summary"' "$OUT/$name.jsonl" | tail -1)
  local planned; planned=$("$BIN" plan "$OUT/$name.yaml" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("memoryPerGpuBytes", 0))')
  echo "{\"case\":\"$name\",\"peak_mib\":${peak:-0},\"planned_bytes\":${planned:-0},\"summary\":${summary:-null}}" | tee -a "$OUT/results.jsonl"
}

job gpt2-bf16 60 bf16 "$GPT2" "$DENSE" "" 16 1
job gpt2-fp16 60 fp16 "$GPT2" "$DENSE" "" 16 1
job long-dense 20 bf16 "$LONG" "$DENSE" "" 2 1
job long-window 20 bf16 "$LONG" "{type: SlidingWindow, slidingWindow: {window: 512}}" "" 2 1
job gpt2-moe 60 bf16 "$GPT2" "$DENSE" "$MOE" 16 1
job gpt2-dp2x2 30 bf16 "$GPT2" "$DENSE" "" 16 2 2 2
for c in gpt2-bf16 gpt2-fp16 long-dense long-window gpt2-moe gpt2-dp2x2; do train $c; done

# The economics pair: the CPU comparison's manifests, scaled to the GPU (8 layers, 512 wide,
# 32 × 1,024 tokens a step; the recipe's experts as wide as the model). A run cut by the timeout
# stops on SIGTERM and still writes its report, which says the target was not reached.
econ() { # side, then extra trainer flags
  timeout -s TERM 100 "$BIN" train "examples/economics/$1.yaml" --json --device cuda --checkpoint-dir "$OUT/ck-econ-$1" \
    --set model.custom.layers=8 --set model.custom.dModel=512 --set model.custom.heads=8 --set training.batchSize=32 \
    --set training.optimizer.learningRate=0.001 --set training.duration.steps=3000 --set training.evalInterval=100 \
    --set data.qualityTarget.value=1.9 --set resources.device=GPU "${@:2}" > "$OUT/econ-$1.jsonl" || true
}
econ baseline
econ recipe --set model.sparsity.moe.expertHidden=512

# PyTorch eager, same model/batch/precision (bf16 autocast-free: weights cast like the trainer).
timeout 150 "$PY" bench/torch_reference.py --data "$DATA" --device cuda --dtype bf16 --steps 60 \
  --batch 16 --seq-len 1024 --layers 12 --d-model 768 --heads 12 --lr 6e-4 --warmup 10 --threads 16 \
  | tail -1 | tee "$OUT/torch.json"

"$PY" - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = {}
for line in open(os.path.join(out, "results.jsonl")):
    r = json.loads(line)
    rows[r["case"]] = r
torch = json.loads(open(os.path.join(out, "torch.json")).read())
def s(c, k):
    return (rows.get(c, {}).get("summary") or {}).get(k, float("nan"))
print("| case | tokens/s | MFU | loss | peak GiB | planned GiB |")
print("|---|---|---|---|---|---|")
for c, r in rows.items():
    print(f"| {c} | {s(c,'tokens_per_second'):.0f} | {100*s(c,'mfu'):.1f}% | {s(c,'train_loss'):.3f} | {r['peak_mib']/1024:.1f} | {r['planned_bytes']/2**30:.1f} |")
print(f"| pytorch eager gpt2 bf16 | {torch['tokens_per_second']:.0f} | | {torch['train_loss']:.3f} | | |")
print()
print(f"frugal / pytorch tokens/s (gpt2 bf16): {s('gpt2-bf16','tokens_per_second')/torch['tokens_per_second']:.2f}")
print(f"sliding window / dense tokens/s at 8k context: {s('long-window','tokens_per_second')/s('long-dense','tokens_per_second'):.2f}")
print(f"MoE / dense tokens/s (equal active FLOPs): {s('gpt2-moe','tokens_per_second')/s('gpt2-bf16','tokens_per_second'):.2f}")
print(f"fp16 skipped steps: {s('gpt2-fp16','skipped_steps')}")
steps = [json.loads(l) for l in open(os.path.join(out, "gpt2-dp2x2.jsonl")) if '"event":"step"' in l]
share = [st["allreduce_seconds"] * st["tokens_per_second"] / (st["tokens"] / st["step"]) for st in steps if st.get("allreduce_seconds")]
print(f"2 replicas x 2 stages / 1 rank tokens/s (one GPU): {s('gpt2-dp2x2','tokens_per_second')/s('gpt2-bf16','tokens_per_second'):.2f}")
if share:
    print(f"2 x 2 all-reduce share of a step: {100*sum(share)/len(share):.1f}%")
PY

echo
echo "economics pair (one seed each, ${OUT}/ck-econ-*):"
"$BIN" report --format markdown --seeds --baseline baseline "$OUT/ck-econ-baseline" "$OUT/ck-econ-recipe" || true
