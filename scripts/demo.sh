#!/usr/bin/env bash
# The main job on bundled defaults: set up, index this project's docs, search them, answer a
# question with citations, then build a small kNN-LM datastore and compare perplexities.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
STORE=${KNNRAG_DEMO_STORE:-.knnrag/store}
DS=${KNNRAG_DEMO_DATASTORE:-.knnrag/datastore}
set -x
knnrag index README.md ARCHITECTURE.md docs --store "$STORE" --collection docs
knnrag search "how are writes kept atomic after a crash" --store "$STORE" --collection docs -k 3
knnrag ask "How do I run the MCP server over HTTP?" --store "$STORE" --collection docs -k 4
knnrag datastore build docs --out "$DS"
knnrag eval ARCHITECTURE.md --datastore "$DS"
knnrag generate "The document store keeps" --datastore "$DS" --max-new-tokens 40
