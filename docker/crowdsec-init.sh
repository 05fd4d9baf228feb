#!/bin/sh
# Runs beside CrowdSec's own entrypoint in the crowdsec container: once cscli can reach the
# database, creates the bouncer key for crowdsec-milter (once) and writes it where the milter
# container reads it.
set -eu
keyfile="${MILTER_KEY_FILE:-/run/secrets/crowdsec-milter/key}"
cscli="${CSCLI:-cscli}"
wait_s="${INIT_WAIT_SECONDS:-120}"
mkdir -p "$(dirname "$keyfile")"
[ -s "$keyfile" ] && exit 0
i=0
until "$cscli" bouncers list >/dev/null 2>&1; do
  if [ "$i" -ge "$wait_s" ]; then
    echo "crowdsec-init: cscli not usable after ${wait_s}s" >&2
    exit 1
  fi
  sleep 1
  i=$((i + 1))
done
key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$cscli" bouncers delete crowdsec-milter >/dev/null 2>&1 || true
"$cscli" bouncers add crowdsec-milter -k "$key" >/dev/null
umask 022
printf '%s\n' "$key" > "$keyfile.tmp"
mv "$keyfile.tmp" "$keyfile"  # the milter waits for a non-empty file: write it whole
echo "crowdsec-init: bouncer key for crowdsec-milter written to $keyfile"
