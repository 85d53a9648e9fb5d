#!/usr/bin/env bash
# The whole test suite from a fresh machine, in one command:  scripts/test.sh [cargo test args]
#
# Starts what the tests need and stops it afterwards:
#   - a throwaway PostgreSQL cluster on a random loopback port (installs `postgresql` with apt
#     when it is missing), unless DSR_TEST_POSTGRES_URL already points at one;
#   - an S3-compatible server (moto, from PyPI) on a random loopback port, unless
#     DSR_TEST_S3_ENDPOINT is already set;
#   - `promtool` (apt package `prometheus`, installed when missing): a test lints /metrics with it;
#   - a NATS server with JetStream (apt package `nats-server`, installed when missing) on a random
#     loopback port, unless DSR_TEST_NATS_URL is already set: the recipients' tests publish to it.
# (tests/chaos.rs, the short fault campaign, starts a Postgres cluster of its own from the same
# binaries: it restarts it fast and immediate, which it cannot do to a shared one.)
# Then: the offline deployment checks, rustfmt, clippy, and `cargo test` over everything
# (SQLite and Postgres, local files and S3). No test skips itself.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/dsr-test.XXXXXX)
chmod 755 "$work"
pg_dir="" moto_pid="" nats_pid=""
cleanup() {
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; fi
  if [ -n "$pg_dir" ]; then as_postgres "$pg_bin/pg_ctl" -D "$pg_dir" -m immediate stop >/dev/null 2>&1 || true; fi
  if [ -n "$moto_pid" ]; then kill "$moto_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -z "${DSR_TEST_POSTGRES_URL:-}" ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "== installing postgresql (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  pg_port=$(free_port)
  pg_dir="$work/pg"
  mkdir -p "$pg_dir"
  [ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
  as_postgres "$pg_bin/initdb" -D "$pg_dir" -A trust -U postgres --no-sync >/dev/null
  as_postgres "$pg_bin/pg_ctl" -D "$pg_dir" -w -l "$pg_dir/server.log" \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300" \
    start >/dev/null
  export DSR_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port"
  echo "== postgres on 127.0.0.1:$pg_port"
fi

if [ -z "${DSR_TEST_S3_ENDPOINT:-}" ]; then
  if ! command -v moto_server >/dev/null 2>&1; then
    echo "== installing moto[server] (pip)"
    python3 -m pip install -q 'moto[server]' >/dev/null
  fi
  s3_port=$(free_port)
  moto_server -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
  moto_pid=$!
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$s3_port/')" 2>/dev/null; then break; fi
    sleep 0.1
  done
  export DSR_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
  echo "== s3 (moto) on 127.0.0.1:$s3_port"
fi

if [ -z "${DSR_TEST_NATS_URL:-}" ]; then
  if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    echo "== installing nats-server (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  fi
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  nats_port=$(free_port)
  mkdir -p "$work/nats"
  "$nats_bin" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 1 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $nats_port), 0.2)" 2>/dev/null; then break; fi
    sleep 0.1
  done
  export DSR_TEST_NATS_URL="nats://127.0.0.1:$nats_port"
  echo "== nats (JetStream) on 127.0.0.1:$nats_port"
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (apt: prometheus)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

started=$(date +%s)
stage() { echo "== [$(( $(date +%s) - started ))s] $*"; }

stage "deployment checks"
bash scripts/check-deploy.sh
stage "rustfmt"
cargo fmt --all -- --check
# Clippy in the test build itself: clippy-driver is rustc with the lints added, so as the
# workspace's compiler wrapper it lints and compiles our crates in one pass, and the
# dependencies are built once instead of twice (`cargo clippy` would first check them all).
# `CLIPPY_ARGS` is how `cargo clippy -- -D warnings` hands its arguments to the driver. Both
# cargo runs below use the same wrapper, so the second one reuses the first one's build.
if command -v clippy-driver >/dev/null 2>&1; then
  export RUSTC_WORKSPACE_WRAPPER
  RUSTC_WORKSPACE_WRAPPER=$(command -v clippy-driver)
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
  stage "clippy -D warnings and the test build, in one pass"
  cargo test --locked --all-targets --no-run
else
  stage "clippy"
  cargo clippy --locked --all-targets -- -D warnings
fi
stage "tests"
cargo test --locked "$@"
stage "exact erasure on messy data, judged by reading the stores directly"
python3 scripts/messy-audit.py --seed-bin target/debug/dsr
stage "done"
