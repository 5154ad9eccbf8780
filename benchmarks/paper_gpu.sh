#!/bin/bash
# The paper table on one GPU: the grid's independent parts as parallel processes (one 135M teacher
# leaves a GPU nearly idle, so nine processes share it), every cell in RECORD, resumable like
# `python -m benchmarks.paper` itself (rerun to continue). Made the record benchmarks/results/paper/h200
# (before the tune_optimizer process was added):
#   RECORD=benchmarks/results/paper/h200 SECONDS_LEFT=480 bash benchmarks/paper_gpu.sh
# then: python -m benchmarks.paper --table-only --name h200 --record benchmarks/results/paper/h200
# Env: RECORD, WORK (scratch: states and the student store), SECONDS_LEFT (wall budget of the parallel
# phase), TASKS, ABL_TASKS, PY, EXTRA (more benchmarks.paper options for every process, e.g.
# "--transfer-set n_tokens=auto --distill-config configs/general-student-16k.yaml": a new record).
set -u
PY=${PY:-python}; WORK=${WORK:-runs/paper/gpu}; RECORD=${RECORD:-benchmarks/results/paper/gpu}
TASKS=${TASKS:-"sst2 imdb tweet_eval arisetv mpqa"}; ABL_TASKS=${ABL_TASKS:-$TASKS}
SECONDS_LEFT=${SECONDS_LEFT:-3600}
export PROMPTPORT_CACHE=${PROMPTPORT_CACHE:-$WORK/cache} PYTHONUNBUFFERED=1
mkdir -p "$WORK/logs"
P="$PY -m benchmarks.paper --device cuda --record $RECORD ${EXTRA:-}"
# 1. the shared general student (distilled once into the store) and the zero-shot cells
$P --state "$WORK/state" --seeds 0 --tasks $TASKS --methods teacher_zero_shot student_zero_shot \
  > "$WORK/logs/student.txt" 2>&1 || { tail -20 "$WORK/logs/student.txt"; exit 1; }
# 2. the rest at once; each process has its own state (scratch) unless its artifacts differ by name
budget=$(( SECONDS_LEFT - 25 )); minutes=$(( (budget - 75) / 60 ))
run() { local name=$1 state=$2; shift 2
  mkdir -p "$WORK/$state"; [ -d "$WORK/$state/data" ] || cp -r "$WORK/state/data" "$WORK/$state/"
  timeout $budget $P --state "$WORK/$state" --budget-min $minutes "$@" > "$WORK/logs/$name.txt" 2>&1
  echo "$name: exit $?"; }
M="student_prompt direct post post_dp8"
run s0 state --seeds 0 --tasks $TASKS --methods $M &
run s1 st1 --seeds 1 --tasks $TASKS --methods $M &
run s2 st2 --seeds 2 --tasks $TASKS --methods $M &
run tt sttt --seeds 0 --tasks $TASKS --methods teacher_tuned &
Z="--seeds 0 --tasks sst2 --methods teacher_zero_shot --ablation-tasks $ABL_TASKS"
run nd a1 $Z --ablations non_distilled &
run al a2 $Z --ablations alpha &
run pd a3 $Z --ablations public_data prompt_length &
run dp a4 $Z --ablations depth calibrate --depths 2 3 &
run to a5 $Z --ablations tune_optimizer &
wait
