#!/usr/bin/env bash
# Runs the README's two commands on a fresh Debian 12 root filesystem, as a new user would:
# debootstrap --variant=minbase bookworm (its pristine tarball cached outside the repo, in
# /var/cache/crowdsec-milter-ci), this commit cloned into it, then `bash integration/demo.sh`
# and `bash integration/run-tests.sh` as root in private PID and mount namespaces with a clean
# environment. Only the host's network settings are carried in: apt sources, resolver, CA
# certificates and pip's configuration. Fails if either command fails.
#
# Usage: bash .ci/fresh-debian.sh [--keep]   (run as root on a Debian 12 host)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
keep=${1:-}
cache=/var/cache/crowdsec-milter-ci
tarball=$cache/bookworm-minbase.tar.gz
export DEBIAN_FRONTEND=noninteractive

say() { printf '== fresh-debian: %s (%ss)\n' "$*" "$SECONDS"; }

# The host's Debian mirror, from its apt sources (deb822 or one-line format).
mirror=$(grep -hE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
         | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n 1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
  say "debootstrap --variant=minbase bookworm from $mirror (cached afterwards in $tarball)"
  mkdir -p "$cache"
  rm -rf "$cache"/build.*
  build=$(mktemp -d "$cache/build.XXXXXX")
  debootstrap --variant=minbase bookworm "$build" "$mirror" > "$cache/debootstrap.log" 2>&1 \
    || { tail -n 30 "$cache/debootstrap.log"; exit 1; }
  rm -rf "$build"/var/cache/apt/archives/*.deb "$build"/var/lib/apt/lists/*
  tar -C "$build" -czf "$tarball.part" . && mv "$tarball.part" "$tarball"
  rm -rf "$build"
fi

roots=()
cleanup() {
  for r in "${roots[@]}"; do
    if [ "$keep" = --keep ]; then echo "root filesystem kept in $r"; else rm -rf --one-file-system "$r"; fi
  done
}
trap cleanup EXIT

# fresh_root: a pristine Debian 12 with this commit in /root/crowdsec-milter; prints its path.
fresh_root() {
  local root
  root=$(mktemp -d /var/tmp/crowdsec-milter-fresh.XXXXXX)
  roots+=("$root")
  tar -C "$root" -xzf "$tarball"
  # Network settings only: apt sources, resolver, CA certificates, pip's configuration.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  rm -f "$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/*
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/"
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && cp "$f" "$root/etc/apt/sources.list.d/"
  done
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
  git clone -q --no-hardlinks "$repo" "$root/root/crowdsec-milter"
  git -C "$root/root/crowdsec-milter" checkout -q "$(git -C "$repo" rev-parse HEAD)"
  fresh=$root
}

# in_root ROOT SCRIPT: SCRIPT run by bash as root in ROOT, in private PID and mount namespaces,
# with nothing of this host's environment but the locale.
in_root() {
  unshare --pid --fork --mount --propagation private --mount-proc="$1/proc" \
    /bin/bash -c '
      set -e
      root=$1
      mount --rbind /dev "$root/dev"
      mount --make-rslave "$root/dev"
      mount -t sysfs sysfs "$root/sys" 2>/dev/null || mount --rbind /sys "$root/sys"
      mount -t tmpfs tmpfs "$root/tmp"
      mount -t tmpfs tmpfs "$root/run"
      exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=true \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd /root/crowdsec-milter && $2"' fresh "$1" "$2"
}

readme_commands='set -eu
echo "== README command 1: bash integration/demo.sh"
bash integration/demo.sh
echo "== after the demo: no daemon of the packages may run, none enabled at boot"
if pgrep -a -x crowdsec || pgrep -a -x master; then
  echo "a packaged daemon is running after set-up" >&2; exit 1
fi
for unit in crowdsec postfix; do
  if ls /etc/systemd/system/*.wants/$unit.service >/dev/null 2>&1; then
    echo "$unit is enabled at boot after set-up" >&2; exit 1
  fi
done
echo "== README command 2: bash integration/run-tests.sh"
bash integration/run-tests.sh
echo "== a second run needs no network: set-up again with apt and pip unreachable"
mv /etc/resolv.conf /etc/resolv.conf.off
PIP_INDEX_URL=http://127.0.0.1:9/ http_proxy=http://127.0.0.1:9/ bash integration/setup.sh
mv /etc/resolv.conf.off /etc/resolv.conf
'
say "fresh Debian 12 #1: the README's two commands"
fresh_root
in_root "$fresh" "$readme_commands"

# The README's Install section, on a machine of its own: its lines up to the first cscli one.
install_lines=$(awk '/^## Install/{on=1; next} on && /^```sh/{code=1; next}
                    code && /^```/{exit} code && /^cscli/{exit} code' "$repo/README.md")
say "fresh Debian 12 #2: the README's Install section"
printf '%s\n' "$install_lines"
fresh_root
in_root "$fresh" "set -eux
$install_lines
crowdsec-milter --version"
say "passed"
