#!/usr/bin/env bash
# Builds the Debian package crowdsec-milter (one arch-all .deb for Debian 12 and 13) and
# leaves it in dist/: dist/crowdsec-milter_VERSION_all.deb, with its .changes and .buildinfo.
# Installs the build dependencies (debian/control's Build-Depends) and lintian with apt when
# they are missing, checks that debian/changelog's version is crowdsec_milter.__version__,
# builds with dpkg-buildpackage -us -uc -b, and fails on any lintian error or warning.
#
# Usage (as root, or with sudo for the apt part): bash packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
say() { printf '== build-deb: %s (%ss)\n' "$*" "$SECONDS"; }

if ! command -v dpkg-checkbuilddeps > /dev/null || ! command -v lintian > /dev/null \
        || ! dpkg-checkbuilddeps > /dev/null 2>&1; then
    say "installing the build dependencies"
    apt-get update -q
    apt-get install -y -q --no-install-recommends dpkg-dev fakeroot lintian
    apt-get build-dep -y -q --no-install-recommends ./
fi

version=$(dpkg-parsechangelog -S Version)
upstream=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' milter/crowdsec_milter/__init__.py)
if [ "$version" != "$upstream" ]; then
    echo "debian/changelog says $version, crowdsec_milter.__version__ is $upstream:" \
         "add a changelog entry (dch -v $upstream)" >&2
    exit 1
fi

say "dpkg-buildpackage -us -uc -b ($version)"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# dpkg-buildpackage writes its results next to the source folder: build from a copy in $out
# so that only dist/ changes here.
mkdir "$out/src"
tar --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./.mutation -cf - . \
    | tar -C "$out/src" -xf -
(cd "$out/src" && dpkg-buildpackage -us -uc -b)
mkdir -p dist
rm -f dist/crowdsec-milter_*
cp "$out"/crowdsec-milter_"$version"_* dist/
deb=dist/crowdsec-milter_${version}_all.deb

say "lintian"
lintian --fail-on error,warning --display-info "dist/crowdsec-milter_${version}_"*.changes
say "built $deb ($(stat -c %s "$deb") bytes)"
