#!/usr/bin/env bash
# Runs the whole suite; pytest's exit code 5 ("no tests collected") is an error here, not a pass.
set -u
PY=${1:-python}
"$PY" -m pytest -q tests
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
