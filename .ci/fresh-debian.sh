#!/usr/bin/env bash
# Fresh Debian root filesystems, as a new user's machine would be: debootstrap --variant=minbase
# of a release (bookworm = Debian 12, trixie = Debian 13), its pristine tarball cached outside
# the repo in /var/cache/crowdsec-milter-ci, this commit cloned into /root/crowdsec-milter, and
# a command run there as root in private PID and mount namespaces with a clean environment.
# Only the host's network settings are carried in: apt sources (with the release's name),
# resolver, CA certificates and pip's configuration.
#
# As a command (run as root on a Debian host):
#   bash .ci/fresh-debian.sh [--keep] RELEASE [COMMAND]
# runs COMMAND (default: the README's two commands) in a new pristine root of RELEASE.
# As a library (.ci/run sources it): fresh_root, in_root, ensure_tarball, readme_commands.
set -euo pipefail
ci_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ci_cache=/var/cache/crowdsec-milter-ci
export DEBIAN_FRONTEND=noninteractive

# The host's Debian mirror, from its apt sources (deb822 `URIs:` lines or one-line format),
# not the security archive.
ci_mirror() {
  local m
  m=$(grep -hE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
        2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' \
        | head -n 1 | tr -d ' ' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# The host's release name (what its apt sources say), replaced by the target's in copies.
ci_host_release() { (. /etc/os-release && echo "$VERSION_CODENAME"); }

# ensure_tarball RELEASE: the cached pristine minbase tarball of RELEASE, built once (two
# jobs asking at the same time build it once: the second waits on the lock).
ensure_tarball() {
  local release=$1 tarball=$ci_cache/$1-minbase.tar.gz build
  mkdir -p "$ci_cache"
  (
    flock 9
    [ -s "$tarball" ] && exit 0
    command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
    echo "== debootstrap --variant=minbase $release from $(ci_mirror) (cached in $tarball)" >&2
    rm -rf "$ci_cache/build.$release".*
    build=$(mktemp -d "$ci_cache/build.$release.XXXXXX")
    debootstrap --variant=minbase "$release" "$build" "$(ci_mirror)" \
      > "$ci_cache/debootstrap-$release.log" 2>&1 \
      || { tail -n 30 "$ci_cache/debootstrap-$release.log" >&2; exit 1; }
    rm -rf "$build"/var/cache/apt/archives/*.deb "$build"/var/lib/apt/lists/*
    tar -C "$build" -czf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$build"
  ) 9> "$ci_cache/$release.lock"
  echo "$tarball"
}

# fresh_root RELEASE DIR: a pristine RELEASE in DIR (empty or absent) with this commit in
# /root/crowdsec-milter.
fresh_root() {
  local release=$1 root=$2 tarball host f
  tarball=$(ensure_tarball "$release")
  host=$(ci_host_release)
  mkdir -p "$root"
  tar -C "$root" -xzf "$tarball"
  # Network settings only: apt sources, resolver, CA certificates, pip's configuration.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  rm -f "$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/*
  if [ -f /etc/apt/sources.list ]; then
    sed "s/\b$host\b/$release/g" /etc/apt/sources.list > "$root/etc/apt/sources.list"
  fi
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed "s/\b$host\b/$release/g" "$f" > "$root/etc/apt/sources.list.d/${f##*/}"
  done
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$root/etc/pip.conf"; fi
  git clone -q --no-hardlinks "$ci_repo" "$root/root/crowdsec-milter"
  git -C "$root/root/crowdsec-milter" checkout -q "$(git -C "$ci_repo" rev-parse HEAD)"
}

# in_root ROOT SCRIPT [SHARED]: SCRIPT run by bash as root in ROOT's /root/crowdsec-milter, in
# private PID and mount namespaces, with nothing of this host's environment but the locale.
# SHARED, a host folder, is mounted at /root/artifacts (what one job leaves for another).
in_root() {
  unshare --pid --fork --mount --propagation private --mount-proc="$1/proc" \
    /bin/bash -c '
      set -e
      root=$1 shared=$3
      # the root a mount point of its own, as on a real machine: `unshare --mount` and
      # dockerd inside need a / they can make private (a plain chroot directory is not one)
      mount --rbind "$root" "$root"
      mount --rbind /dev "$root/dev"
      mount --make-rslave "$root/dev"
      mount -t sysfs sysfs "$root/sys" 2>/dev/null || mount --rbind /sys "$root/sys"
      mount -t tmpfs tmpfs "$root/tmp"
      mount -t tmpfs tmpfs "$root/run"
      if [ -n "$shared" ]; then
        mkdir -p "$root/root/artifacts"
        mount --bind "$shared" "$root/root/artifacts"
      fi
      exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=true \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd /root/crowdsec-milter && $2"' fresh "$1" "$2" "${3:-}"
}

# The README's two commands, exactly as written, then the promises around them.
# shellcheck disable=SC2034  # used by .ci/run
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

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  keep=
  if [ "${1:-}" = --keep ]; then keep=1; shift; fi
  release=${1:?usage: bash .ci/fresh-debian.sh [--keep] RELEASE [COMMAND]}
  command=${2:-$readme_commands}
  root=$(mktemp -d "/var/tmp/crowdsec-milter-$release.XXXXXX")
  if [ -n "$keep" ]; then
    trap 'echo "root filesystem kept in $root"' EXIT
  else
    trap 'rm -rf --one-file-system "$root"' EXIT
  fi
  fresh_root "$release" "$root"
  in_root "$root" "$command"
fi
