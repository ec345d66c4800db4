#!/usr/bin/env bash
# Dense fp32 against fine-grained MoE bf16 to one quality target, over seeds; see README.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${FRUGAL_TRAINER:-frugal-trainer}
out=${BENCH_OUT:-$(mktemp -d)}
seeds=${BENCH_SEEDS:-1 2 3}
for model in dense-fp32 moe-bf16; do
  for seed in $seeds; do
    job="$out/$model-seed$seed.yaml"
    sed -e "s/^  name: .*/  name: $model-seed$seed/" -e "s/^  training:/  training:\n    seed: $seed/" "$here/$model.yaml" > "$job"
    "$bin" train "$job" --checkpoint-dir "$out/$model-seed$seed" --threads "${BENCH_THREADS:-2}" --json > "$out/$model-seed$seed.log"
  done
done
"$bin" report "$out"
"$bin" report "$out" --format csv > "$out/table.csv"
python3 - "$out/table.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for model in sorted({r["job"].rsplit("-seed", 1)[0] for r in rows}):
    rs = [r for r in rows if r["job"].startswith(model + "-seed")]
    hit = [float(r["gpu_hours_to_target"]) for r in rs if r["gpu_hours_to_target"]]
    toks = [int(r["tokens_to_target"]) for r in rs if r["tokens_to_target"]]
    if not hit:
        print(f"{model}: target not reached in any of {len(rs)} runs"); continue
    sd = statistics.stdev(hit) if len(hit) > 1 else 0.0
    print(f"{model}: reached in {len(hit)}/{len(rs)} runs; CPU-hours to target mean {statistics.mean(hit):.5f} "
          f"sd {sd:.5f} (min {min(hit):.5f}, max {max(hit):.5f}); tokens to target mean {statistics.mean(toks):.0f}")
PY
echo "reports in $out"
