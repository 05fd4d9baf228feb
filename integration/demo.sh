#!/usr/bin/env bash
# Sets up (integration/setup.sh) and runs the demo: crowdsec-milter in front of a real
# Postfix and a real CrowdSec on loopback, showing a banned client rejected.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/integration/setup.sh"
exec "$here/.venv/bin/python" "$here/integration/demo.py" "$@"
