#!/usr/bin/env bash
# Sets up and runs the test suite from a fresh clone on a machine with only Python 3.11:
# Debian's chromium (the HTML report is tested in a real headless browser), a virtualenv in
# .venv, the package with its test extras, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
  else
    echo "scripts/test.sh: chromium is needed for tests/test_report_browser.py; install it with your package manager" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
