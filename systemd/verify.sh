#!/usr/bin/env bash
# Checks the unit files with systemd's own tools: `systemd-analyze verify` must print nothing,
# and `systemd-analyze security` must rate the service at most 2.0 ("OK"; the threshold is given in tenths).
# Usage: systemd/verify.sh PATH_TO_AUTOINVOICE_BINARY
set -euo pipefail
binary=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# verify checks that ExecStart's binary exists: point the units at the one just built.
for unit in autoinvoice.service autoinvoice@.service; do
  sed "s|/usr/local/bin/autoinvoice|$binary|" "$here/$unit" > "$work/$unit"
done
cp "$work/autoinvoice@.service" "$work/autoinvoice@0.service"
cd "$work"
for unit in autoinvoice.service autoinvoice@0.service; do
  out=$(systemd-analyze verify "./$unit" 2>&1) || { echo "$out"; exit 1; }
  if [ -n "$out" ]; then echo "systemd-analyze verify $unit:"; echo "$out"; exit 1; fi
  systemd-analyze security --offline=yes --threshold=20 "./$unit" | tail -n 1
done
echo "unit files verified"
