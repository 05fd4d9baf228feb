#!/usr/bin/env bash
# Sets up (integration/setup.sh) and runs every test: ruff, unit tests, and the integration
# tests against real Postfix and CrowdSec. Run as root on Debian 12 or 13. Extra arguments go to
# pytest (e.g. -k live, or -x).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash integration/setup.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
rc=0
.venv/bin/pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
fi
exit "$rc"
