#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, pg_ctl) for tests/test_shared_server.py, which runs a
# throwaway cluster behind a real `mlflow server`. Debian installs them under
# /usr/lib/postgresql/<major>/bin. Safe to run again: does nothing once a major version is there.
set -euo pipefail

have_postgres() {
  local bin
  for bin in /usr/lib/postgresql/*/bin; do
    if [[ -x "$bin/initdb" && -x "$bin/pg_ctl" ]]; then
      return 0
    fi
  done
  return 1
}

if have_postgres; then
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL server binaries not found (and cannot apt-get install them here): the PostgreSQL test (tests/test_shared_server.py) will be skipped"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql

if ! have_postgres; then
  echo "apt-get installed postgresql, but no initdb/pg_ctl under /usr/lib/postgresql/*/bin" >&2
  exit 1
fi
