#!/usr/bin/env bash
# Set up (idempotent), lint and type-check, then run the whole test suite offline.
# Inner loop: bash scripts/test.sh -m "not slow and not integration"   (seconds, no real models)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check --no-cache .
mypy
exec python -m pytest -q "$@"
