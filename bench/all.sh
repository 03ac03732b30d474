#!/usr/bin/env bash
# Reruns every figure of docs/performance.md, one bench after another, and writes each bench's command and the
# table it printed to bench/results.md: the tables of docs/performance.md are that file's, so every figure there has
# the command that produced it. `make bench` runs it. Each bench prints the machine, its bounds and the load average
# measured in the same run; a bench that fails is marked FAILED in the results and the script exits non-zero at the
# end, after the others ran.
#
#   REPEAT=3     timed runs per side of every comparison, interleaved (fewer: faster, noisier)
#   QUICK=1      small sizes, to check that every bench runs (its figures are not the documented ones)
#   ONLY="dpo weight_sync"   run only these benches (names as in the list below); ONLY=scale: the opt-in scale bench
#   SCALE_PROMPTS (1000,4000,16000)   the scale bench's sizes
#   PYTHON, OUT (bench/results.md), LOG (every bench's whole output; default: a new temporary file, named at the end)
# A full run (no QUICK, no ONLY) also pastes bench/results.md into docs/performance.md between its bench-results markers.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
REPEAT=${REPEAT:-3}
OUT=${OUT:-bench/results.md}
LOG=${LOG:-$(mktemp -t rlaif-bench-XXXXXX.log)}
ONLY=${ONLY:-}

# name | arguments. The sizes are the documented figures' sizes, chosen to keep the whole run near 25 minutes on
# a 2-core CPU; QUICK=1 swaps in the smallest sizes that still exercise every side.
if [ "${QUICK:-0}" = 1 ]; then
  BENCHES=(
    "dpo|bench/dpo.py --workers 1 --threads 2 --steps 3 --batch 2 --pairs 8 --repeat $REPEAT"
    "weight_sync|bench/weight_sync.py --repeat $REPEAT"
    "rollout|bench/rollout.py --prompts 4 --k 2 --max-tokens 8 --threads 2 --repeat $REPEAT"
    "judge|bench/judge.py --videos 2 --k 2 --repeat $REPEAT"
    "ingest|bench/ingest.py --videos 4 --workers 1 --repeat 1"
    "ingest_caption|bench/ingest_caption.py --videos 4 --max-tokens 8 --repeat 1"
    "round|bench/round.py"
    "serve_load|bench/serve_load.py --seconds 3 --clients 2"
  )
else
  BENCHES=(
    "dpo|bench/dpo.py --workers 1 --threads 2 --steps 4 --batch 4 --repeat $REPEAT --alone"
    "weight_sync|bench/weight_sync.py --repeat $REPEAT"
    "sync_profile|bench/sync_profile.py --repeat $REPEAT"
    "rollout|bench/rollout.py --prompts 16 --k 4 --max-tokens 32 --threads 2 --repeat $REPEAT"
    "judge|bench/judge.py --videos 4 --repeat $REPEAT"
    "ingest|bench/ingest.py --repeat 1"
    "ingest_caption|bench/ingest_caption.py"
    "round|bench/round.py"
    "serve_load|bench/serve_load.py --seconds 15 --clients 8"
  )
fi
# The "Frames storage" section's figures, once its bench is there (default sizes).
if [ -f bench/frames_storage.py ]; then
  BENCHES+=("frames_storage|bench/frames_storage.py")
fi
# Ray Data's Parquet readers (why ray_env chooses V1), ~1 minute.
BENCHES+=("ray_data_read|bench/ray_data_read.py --repeat $REPEAT")
# Opt-in (~20 minutes on a 2-core CPU at the default sizes): the whole pipeline at several sizes, only when ONLY names it
# (ONLY=scale); it also writes bench/scale_results.md itself. SCALE_PROMPTS sets the sizes.
if [[ " $ONLY " == *" scale "* ]]; then
  if [ "${QUICK:-0}" = 1 ]; then SCALE_PROMPTS=${SCALE_PROMPTS:-40,80}; fi
  BENCHES+=("scale|bench/scale.py --prompts ${SCALE_PROMPTS:-1000,4000,16000}")
fi
# GPU-only: the DPO step of a 2B-class video LMM; run where a GPU is present.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  BENCHES+=("gpu_dpo|bench/gpu_dpo.py")
fi

started=$(date -u +"%Y-%m-%d %H:%M UTC")
failed=()
{
  echo "<!-- written by bench/all.sh (make bench); rerun it instead of editing -->"
  echo "Run started $started; $("$PYTHON" -c 'import sys; sys.path.insert(0, "bench"); from common import machine, load_average; print(machine() + "; " + load_average())'); REPEAT=$REPEAT${QUICK:+, QUICK=$QUICK}."
} > "$OUT"
: > "$LOG"
for entry in "${BENCHES[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
    continue
  fi
  echo "== $name: python $args" | tee -a "$LOG"
  stdout=$(mktemp)
  t0=$(date +%s)
  # shellcheck disable=SC2086  # the arguments are words
  "$PYTHON" $args > "$stdout" 2>> "$LOG"
  rc=$?
  seconds=$(( $(date +%s) - t0 ))
  cat "$stdout" >> "$LOG"
  {
    echo
    echo "### $name"
    echo
    echo "\`python $args\` ($seconds s)"
    echo
    if [ "$rc" -ne 0 ]; then
      echo "FAILED (exit $rc): see the log"
    else
      # What the bench printed from its machine line on (engines' and Ray's log lines come before it; the few that
      # Ray forwards later are coloured, and dropped).
      awk '/CPU cores, torch/ {found = NR} {line[NR] = $0}
           END {for (i = (found ? found : 1); i <= NR; i++) if (line[i] !~ /\033\[/) print line[i]}' "$stdout"
    fi
  } >> "$OUT"
  rm -f "$stdout"
  [ "$rc" -ne 0 ] && failed+=("$name")
  echo "== $name: exit $rc, $seconds s" | tee -a "$LOG"
done
echo "Run ended $(date -u +"%Y-%m-%d %H:%M UTC")." >> "$OUT"
# A full run (all benches, documented sizes) replaces the figures of docs/performance.md, between its markers.
DOC=docs/performance.md
if [ "${QUICK:-0}" != 1 ] && [ -z "$ONLY" ] && grep -q "<!-- bench-results:begin" "$DOC"; then
  awk -v results="$OUT" '
    /<!-- bench-results:begin/ {print; while ((getline line < results) > 0) print line; skip = 1; next}
    /<!-- bench-results:end/ {skip = 0}
    !skip {print}' "$DOC" > "$DOC.new" && mv "$DOC.new" "$DOC"
  echo "pasted $OUT into $DOC"
fi
echo "results: $OUT; whole output: $LOG"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
