#!/usr/bin/env bash
# Installs everything the demo and the tests need on a Debian 12 (bookworm) or Debian 13
# (trixie) machine (run as root).
#
# What it installs: Debian's postfix, crowdsec, libmilter, swaks, miltertest and the tools the
# tests drive, the compiler and Python headers that pymilter (PyPI has only its source) needs,
# Sendmail's packages unpacked (not installed) under /var/cache/crowdsec-milter-tests, and a
# venv in .venv with crowdsec-milter and its pinned test tools.
#
# What it leaves alone: services. It never stops, restarts or reconfigures a running Postfix
# or CrowdSec; the demo and the tests run private instances of their own. A daemon package
# that was not installed before is kept from starting at install (policy-rc.d) and is not
# enabled at boot.
#
# Safe to run again, and then offline: apt is asked only for what is missing, pip only when
# setup.cfg or this file changed since the last install.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

# Package names that follow the release. The unpacked Sendmail binary needs OpenLDAP's
# library: 2.5 on Debian 12, 2.6 (libldap2) on Debian 13 and later. The compose test
# (integration/test_compose.py) needs Docker and the release's Compose: Debian 12's docker.io
# carries the docker CLI and Compose is v1 (docker-compose 1.29); from Debian 13 the CLI is
# docker-cli and Compose is v2. debootstrap makes its base images.
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
case "$codename" in
  bookworm) libldap=libldap-2.5-0; docker_pkgs=(docker.io docker-compose) ;;
  *) libldap=libldap2; docker_pkgs=(docker.io docker-cli docker-compose) ;;
esac
pkgs=(postfix crowdsec libmilter-dev libmilter1.0.1 swaks miltertest python3-venv python3-dev
      gcc libc6-dev ca-certificates openssl iproute2 procps python3-yaml systemd
      logrotate m4 libwrap0 "$libldap" "${docker_pkgs[@]}" iptables debootstrap)
# packages whose daemons must not start at install, nor at boot (docker.io: docker.service,
# and containerd with it)
daemons=(postfix crowdsec docker.io)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

updated=0
apt_update() {
  [ "$updated" = 1 ] && return
  apt-get update -q
  updated=1
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  new_daemons=()
  for d in "${daemons[@]}"; do
    [[ " ${missing[*]} " == *" $d "* ]] && new_daemons+=("$d")
  done
  # CrowdSec's post-install step registers with the online Central API unless this file has
  # content; there is no network for that here, and the tests never use the Central API.
  mkdir -p /etc/crowdsec
  [ -s /etc/crowdsec/online_api_credentials.yaml ] || echo "# offline: no Central API" > /etc/crowdsec/online_api_credentials.yaml
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string localhost" | debconf-set-selections
  # Debian's policy-rc.d: exit 101 keeps invoke-rc.d (and so the packages' scripts) from
  # starting the new daemons. Only while we install, and only if the machine has none.
  ours=0
  if [ ${#new_daemons[@]} -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    ours=1
  fi
  trap 'if [ "$ours" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  apt_update
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ "$ours" = 1 ]; then rm -f /usr/sbin/policy-rc.d; ours=0; fi
  # Newly installed daemons are not enabled at boot: the demo and the tests never use them.
  for d in "${new_daemons[@]}"; do
    d=${d%.io}
    # systemctl edits the unit links itself when systemd is not running (a chroot, a
    # container); deb-systemd-helper refuses to run outside dpkg.
    if command -v systemctl >/dev/null; then
      systemctl disable "$d.service" || true
      if [ "$d" = docker ]; then
        systemctl disable docker.socket containerd.service || true
      fi
    fi
    if command -v update-rc.d >/dev/null && [ -e "/etc/init.d/$d" ]; then
      update-rc.d "$d" disable >/dev/null 2>&1 || true
    fi
  done
fi

# Sendmail conflicts with Postfix as a package: its binaries are unpacked beside it, once.
sendmail_cache=/var/cache/crowdsec-milter-tests/sendmail
if [ ! -x "$sendmail_cache/root/usr/libexec/sendmail/sendmail" ]; then
  echo "setup: unpacking Sendmail into $sendmail_cache"
  mkdir -p "$sendmail_cache"
  if ! (cd "$sendmail_cache" && apt-get download sendmail-bin sendmail-cf sendmail-base); then
    apt_update
    (cd "$sendmail_cache" && apt-get download sendmail-bin sendmail-cf sendmail-base)
  fi
  for deb in "$sendmail_cache"/*.deb; do dpkg -x "$deb" "$sendmail_cache/root"; done
fi

# Debian's Python (the one python3-venv belongs to), not whatever python3 is first on PATH.
py=${PYTHON:-/usr/bin/python3}
if [ ! -x "$here/.venv/bin/python" ]; then
  "$py" -m venv "$here/.venv"
fi
# pip runs only when what it would install changed: a re-run needs no network.
stamp="$here/.venv/.crowdsec-milter-installed"
want=$(cat "$here/setup.cfg" "$here/pyproject.toml" "$here/integration/setup.sh" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$here/.venv/bin/pip" install -q --disable-pip-version-check -e "$here[test,bench]"
  echo "$want" > "$stamp"
fi
