#!/usr/bin/env bash
# Regenerates every figure of BENCHMARKS.md (about 30 minutes on 2 cores):
#   bench/run-all.sh [postgres://postgres@127.0.0.1:5432/postgres] [RUNS]
# Prints the machine, then each benchmark's rounds and median; paste the medians into
# BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
pg="${1:-postgres://postgres@127.0.0.1:5432/postgres}"
runs="${2:-3}"
cargo build --release --quiet --bin autoinvoice --bin autoinvoice-bench
bench=target/release/autoinvoice-bench
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(psql "$pg" -tAc 'select version()' | cut -d, -f1)"
echo "== PostgreSQL, size S";                      $bench --size S --db "$pg" --runs "$runs"
echo "== PostgreSQL, size S without the 4,000,000 out-of-period rows"; $bench --size S --db "$pg" --runs "$runs" --without-outside
echo "== PostgreSQL, size M";                      $bench --size M --db "$pg" --runs "$runs"
sqlite_dir=$(mktemp -d)
echo "== SQLite, size S";                          $bench --size S --db "sqlite://$sqlite_dir" --runs "$runs"
rm -rf "$sqlite_dir"
echo "== daemon, 10,000 tenants (SQLite, then PostgreSQL)"
python3 bench/daemon_idle.py --tenants 10000 --seconds 60
python3 bench/daemon_idle.py --tenants 10000 --seconds 60 --db postgres
