# shellcheck shell=bash
# What the A/B benchmarks (bench/ab-*.sh) share: two builds run alternately, A, B, A, B, ..., so
# that a change in machine load falls on both. Sourced.

# ab_runs REPS FILE RUN: calls `RUN A`, then `RUN B`, REPS times, appending each line they print to
# FILE prefixed with its side; the machine's load goes to stderr before the first and after each
# rep.
ab_runs() {
  local reps=$1 file=$2 run=$3 rep side
  echo "load before: $(uptime)" >&2
  for rep in $(seq "$reps"); do
    for side in A B; do
      "$run" "$side" | sed "s/^/$side /" >>"$file"
    done
    echo "rep $rep done: $(uptime)" >&2
  done
}
