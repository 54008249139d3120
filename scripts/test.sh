#!/usr/bin/env bash
# Sets up and runs the test suite from a fresh clone on a machine with only Python 3.11:
# Debian's chromium (the HTML report is tested in a real headless browser) and postgresql
# (`astroflax tune --storage postgresql://` is tested against a real server, which
# tests/tune/postgres.py starts in a temporary directory as an unprivileged user), a virtualenv
# in .venv, the package with its test extras, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL server binaries, on PATH or where Debian puts them (postgresql-NN is not on PATH).
have_postgres_server() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
    return 0
  fi
  local bin
  for bin in /usr/lib/postgresql/*/bin; do  # an unmatched glob stays literal and fails the test
    if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ]; then
      return 0
    fi
  done
  return 1
}

needed_by() {
  case "$1" in
    chromium) echo "tests/test_report_browser.py" ;;
    postgresql) echo "tests/tune/test_postgres.py" ;;
  esac
}

packages=()
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  packages+=(chromium)
fi
have_postgres_server || packages+=(postgresql)
if [ "${#packages[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q  # once for all of them
    # env, not a VAR=value prefix: sudo resets the environment.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
  else
    for pkg in "${packages[@]}"; do
      echo "scripts/test.sh: $pkg is needed for $(needed_by "$pkg"); install it with your package manager" >&2
    done
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
# The allocator setting the `astroflax` program gives itself (astroflax/launch.py): most tests run
# the trainer inside pytest's own processes, which only get it from their environment.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
exec .venv/bin/python -m pytest "$@"
