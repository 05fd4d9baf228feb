#!/bin/sh
# Waits for the bouncer key that the crowdsec service writes at start, then runs the milter.
# Flags given to the container are passed on; settings come from CROWDSEC_MILTER_* variables.
set -eu
key="${CROWDSEC_MILTER_API_KEY_FILE:-/run/secrets/crowdsec-milter/key}"
wait_s="${KEY_WAIT_SECONDS:-120}"
i=0
while [ ! -s "$key" ]; do
  if [ "$i" -ge "$wait_s" ]; then
    echo "crowdsec-milter: no bouncer key in $key after ${wait_s}s" >&2
    exit 2
  fi
  sleep 1
  i=$((i + 1))
done
exec "${CROWDSEC_MILTER_BIN:-crowdsec-milter}" "$@"
