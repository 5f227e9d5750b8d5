#!/usr/bin/env bash
# The test lanes, offline. Both print the 15 slowest tests at the end.
#   bash scripts/test.sh           everything: set up (idempotent), ruff, mypy, the whole suite (= .ci/run)
#   bash scripts/test.sh --fast    the inner loop: ruff and the tests not marked slow, integration, ray or
#                                  browser (no Ray clusters, real models, crash loops or Chromium); <= 90 s
# Further arguments go to pytest: bash scripts/test.sh --fast tests/lm -x
# KNNRAG_VENV=DIR uses another virtual environment (a git worktree sharing the main checkout's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

FAST_MARKERS="not slow and not integration and not ray and not browser"
fast=0
args=()
for a in "$@"; do
    if [ "$a" = "--fast" ]; then fast=1; else args+=("$a"); fi
done

venv=${KNNRAG_VENV:-.venv}
if [ "$fast" = 0 ] || [ ! -x "$venv/bin/python" ]; then
    bash scripts/setup.sh
    venv=.venv
fi
. "$venv/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

ruff check --no-cache .
if [ "$fast" = 1 ]; then
    set -- -m "$FAST_MARKERS" ${args[@]+"${args[@]}"}
else
    mypy
    set -- ${args[@]+"${args[@]}"}
fi

rc=0
python -m pytest -q --durations=15 "$@" || rc=$?
if [ "$rc" = 5 ]; then
    echo "scripts/test.sh: pytest collected no tests (exit 5): check the paths and the -m expression" >&2
fi
exit "$rc"
