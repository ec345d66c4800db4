#!/usr/bin/env bash
# A sparse teacher, a dense student distilled from it and the same student without it, each
# exported as int8; see README.md. Run from the repository root (the jobs read
# data/tinyshakespeare.txt).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${FRUGAL_TRAINER:-frugal-trainer}
out=${BENCH_OUT:-$(mktemp -d)}
threads=${BENCH_THREADS:-2}
train() {
  "$bin" train "$1" --checkpoint-dir "$out/$2" --threads "$threads" --json > "$out/$2.log"
}
train "$here/teacher.yaml" teacher
sed "s|TEACHER_CHECKPOINT|$out/teacher|" "$here/student.yaml" > "$out/student.yaml"
train "$out/student.yaml" student-distilled
train "$here/student-alone.yaml" student-alone
"$bin" report "$out"
"$bin" report "$out" --format csv > "$out/table.csv"
# the export of each model: unquantized, round-to-nearest and calibrated int8
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for run in ("teacher", "student-distilled", "student-alone"):
    events = [json.loads(l) for l in open(f"{out}/{run}.log") if l.startswith("{")]
    q = next(e for e in events if e["event"] == "quantized")
    print(f"\n== {run}: {q['method']}; weights {q['unquantizedWeightBytes']:,} -> {q['weightBytes']:,} bytes")
    for name in ("unquantized", "roundToNearest", "calibrated"):
        f = q[name]
        zs = " ".join(f"{z['name']} {z['accuracy'] * 100:.1f}%" for z in f.get("zeroShot", []))
        print(f"  {name:15} val loss {f['validationLoss']:.4f}  bits/byte {f['bitsPerByte']:.4f}  ppl {f['perplexity']:.3f}  {zs}")
    print(f"  CPU inference tokens/s: unquantized {q['unquantizedTokensPerSecond']:.0f}, int8 {q['tokensPerSecond']:.0f}")
    d = [e for e in events if e["event"] == "distillation"]
    if d:
        d = d[-1]
        print(f"  teacher bits/byte {d['teacher']['bitsPerByte']:.4f}, student - teacher {d.get('bitsPerByteDelta', float('nan')):+.4f}; "
              f"inference tokens/s teacher {d['teacherTokensPerSecond']:.0f}, student {d['studentTokensPerSecond']:.0f}")
PY
echo "reports in $out"
