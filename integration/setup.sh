#!/usr/bin/env bash
# Installs everything the demo and the tests need on a Debian 12 machine (run as root):
# Debian's Postfix, CrowdSec, libmilter, swaks and miltertest, then a venv in .venv with
# crowdsec-milter and its test tools. Safe to run again: it only installs what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

pkgs=(postfix crowdsec libmilter-dev libmilter1.0.1 swaks miltertest python3-venv
      ca-certificates openssl iproute2 procps docker-compose systemd logrotate m4 libwrap0)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # CrowdSec's post-install step registers with the online Central API unless this file has
  # content; there is no network for that here, and the tests never use the Central API.
  mkdir -p /etc/crowdsec
  [ -s /etc/crowdsec/online_api_credentials.yaml ] || echo "# offline: no Central API" > /etc/crowdsec/online_api_credentials.yaml
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string localhost" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packages may start system copies of the daemons; the tests run private ones instead.
pkill -x crowdsec 2>/dev/null || true
postfix stop >/dev/null 2>&1 || true

py=${PYTHON:-python3}
if [ ! -x "$here/.venv/bin/python" ]; then
  "$py" -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install -q --disable-pip-version-check -e "$here[test,bench]"
