#!/usr/bin/env bash
# Fuzzes the running daemon's /api/v1 against docs/openapi.json with schemathesis (PyPI):
# no 5xx, no schema violation, no undocumented status. Not part of every-commit CI (slow).
#
#   scripts/schemathesis.sh [MAX_EXAMPLES]      # default 200 per operation
#
# Every check runs but positive_data_acceptance: JSON Schema cannot say "a Monday", so a
# schema-valid biweekly_anchor on another day is rightly refused with 422 (SPEC §9).
#
# It builds the debug binary, seeds a throwaway SQLite database with the demo dataset,
# starts `serve` on a free port with an admin token, runs schemathesis with every check,
# and stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-200}"
command -v schemathesis >/dev/null || pip install --quiet schemathesis
cargo build --quiet
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
binary="$PWD/target/debug/autoinvoice"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token="schemathesis-token"
cat > "$work/autoinvoice.toml" <<TOML
[http]
listen = "127.0.0.1:$port"
admin_token = "$token"
[log]
level = "warn"
TOML
(cd "$work" && "$binary" --config "$work/autoinvoice.toml" demo > /dev/null)
(cd "$work" && exec "$binary" --config "$work/autoinvoice.toml" serve 2> "$work/serve.log") &
pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
  sleep 0.2
done
schemathesis run docs/openapi.json \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$examples" \
  --seed 20261204 \
  --report junit --report-dir "$work/report" "${@:2}"
status=$?
kill -TERM "$pid"; wait "$pid" || true
if grep -q "panicked" "$work/serve.log"; then echo "the daemon panicked:"; cat "$work/serve.log"; exit 1; fi
exit $status
