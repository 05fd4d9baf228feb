#!/bin/sh
# Runs beside CrowdSec's own entrypoint in the crowdsec container (see docker-compose.yml) and
# makes sure the bouncer "crowdsec-milter" exists with the key the milter container reads
# from the shared volume:
#   no key file yet                 -> a new random key; a stale bouncer of that name replaced
#   key file, but no such bouncer   -> registered again with that key (database recreated)
#   key file and bouncer            -> nothing to do
# cscli works on the database directly, so this needs no running LAPI; it retries while
# CrowdSec's entrypoint is still writing the config or holds the database.
# Plain POSIX sh: the official image runs it with busybox.
set -eu
keyfile="${MILTER_KEY_FILE:-/run/secrets/crowdsec-milter/key}"
name="${BOUNCER_NAME:-crowdsec-milter}"
owner="${KEY_OWNER:-}"   # uid the milter runs as: the key becomes 0600 and its own
cscli="${CSCLI:-cscli}"
wait_s="${INIT_WAIT_SECONDS:-300}"

log() { echo "crowdsec-init: $*" >&2; }

deadline=$(( $(date +%s) + wait_s ))
retry() {  # retry CMD...: until it succeeds, or give up at the deadline
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "gave up after ${wait_s}s: $*"
      exit 1
    fi
    sleep 1
  done
}

list=$(mktemp)
trap 'rm -f "$list"' EXIT
bouncers() { "$cscli" bouncers list -o json >"$list" 2>/dev/null; }
known() { grep -q "\"name\": *\"$name\"" "$list"; }
# An add that failed after all (e.g. a busy database) is retried; one that took effect
# although cscli said otherwise counts as done.
add() { "$cscli" bouncers add "$name" -k "$1" >/dev/null 2>&1 || { bouncers && known; }; }
delete() { "$cscli" bouncers delete "$name" >/dev/null 2>&1 || { bouncers && ! known; }; }

retry bouncers
if [ -s "$keyfile" ]; then
  key=$(cat "$keyfile")
  if known; then
    log "bouncer $name is registered"
  else
    retry add "$key"
    log "bouncer $name registered again with the key in $keyfile"
  fi
else
  key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  if known; then
    retry delete
  fi
  retry add "$key"
  mkdir -p "$(dirname "$keyfile")"
  umask 077
  printf '%s\n' "$key" >"$keyfile.tmp"
  mv "$keyfile.tmp" "$keyfile"  # the milter waits for a non-empty file: it appears whole
  log "bouncer $name added; its key is in $keyfile"
fi
if [ -n "$owner" ]; then
  chown "$owner" "$keyfile"
  chmod 0600 "$keyfile"
else
  chmod 0644 "$keyfile"  # the milter runs as another user in another container
fi
