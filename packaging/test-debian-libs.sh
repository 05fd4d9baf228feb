#!/usr/bin/env bash
# Runs the unit suite (tests/) against Debian's own python3-* libraries, the ones the .deb
# depends on, instead of the versions pip would pick: proof that the code runs on this
# release's python3-milter, -httpx, -cachetools, -configargparse, -prometheus-client and
# -maxminddb, and that setup.cfg's version ranges admit them.
#
# Run as root on Debian 12 or 13 (a fresh root filesystem will do), in the repository:
#   bash packaging/test-debian-libs.sh [pytest arguments]
# It installs the libraries with apt, makes a venv that sees them (--system-site-packages),
# pip-installs only the pinned test tools of setup.cfg's `test` extra and this source tree
# without its dependencies, checks that every library the product imports is Debian's,
# prints their versions, checks that setup.cfg's ranges admit them (pip check), then runs
# pytest on tests/ (a run that collects nothing fails).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
venv=${DEBIAN_LIBS_VENV:-/var/tmp/crowdsec-milter-debian-libs}

# The product's dependencies as Debian packages, and what building the source tree needs
# (setuptools, wheel) and pip's HTTPS needs (ca-certificates), all from Debian.
libs=(python3-milter python3-httpx python3-cachetools python3-configargparse
      python3-prometheus-client python3-maxminddb)
echo "== apt: ${libs[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends "${libs[@]}" libmilter1.0.1 python3-venv \
  python3-setuptools python3-wheel ca-certificates

rm -rf "$venv"
python3 -m venv --system-site-packages "$venv"
py=$venv/bin/python
# The test tools, pinned in setup.cfg; ruff lints, it takes no part in the tests.
mapfile -t tools < <(python3 -c '
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options.extras_require"]["test"].split():
    if not line.startswith("ruff"):
        print(line)')
echo "== pip: ${tools[*]}"
"$py" -m pip install -q --disable-pip-version-check "${tools[@]}"
# This tree, editable (imports come from milter/) and with no dependencies: its
# console script lands in the venv's bin, where the tests start the program from.
"$py" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .

echo "== the product's libraries: Debian's, nothing of them in the venv"
"$py" - <<'EOF'
import importlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

debian = Path("/usr/lib/python3/dist-packages")
# module -> its distribution's name
deps = {"milter": "pymilter", "Milter": "pymilter", "httpx": "httpx", "httpcore": "httpcore",
        "cachetools": "cachetools", "configargparse": "ConfigArgParse",
        "prometheus_client": "prometheus_client", "maxminddb": "maxminddb"}
bad = []
for module, dist in deps.items():
    where = Path(importlib.import_module(module).__file__).resolve()
    print(f"  {module:18} {md.version(dist):10} {where}")
    if not where.is_relative_to(debian):
        bad.append(f"{module} comes from {where}, not from Debian's {debian}")
ours = Path(importlib.import_module("crowdsec_milter").__file__).resolve()
print(f"  {'crowdsec_milter':18} {'':10} {ours}")
if not ours.is_relative_to(Path.cwd() / "milter"):
    bad.append(f"crowdsec_milter comes from {ours}, not from this tree's milter/")
# The tests start the program from the venv's bin, or as `sys.executable -m`: the same
# interpreter as this check, so the same libraries.
script = Path(sys.executable).parent / "crowdsec-milter"
if script.read_text().splitlines()[0] != f"#!{sys.executable}":
    bad.append(f"{script} does not run {sys.executable}")
local = subprocess.run([sys.executable, "-m", "pip", "list", "--local", "--format=freeze",
                        "--disable-pip-version-check"],
                       capture_output=True, text=True, check=True).stdout
names = {line.split("==")[0].lower().replace("_", "-") for line in local.split()}
for dist in set(deps.values()):
    if dist.lower().replace("_", "-") in names:
        bad.append(f"pip installed {dist} into the venv")
print(f"  python {sys.version.split()[0]}; in the venv: {', '.join(sorted(names))}")
if bad:
    sys.exit("\n".join(bad))
EOF
"$venv/bin/crowdsec-milter" --version
echo "== setup.cfg's version ranges admit these libraries"
"$py" -m pip check --disable-pip-version-check

echo "== pytest tests"
rc=0
"$py" -m pytest -p no:cacheprovider tests "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
fi
exit "$rc"
