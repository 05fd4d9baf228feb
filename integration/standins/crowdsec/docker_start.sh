#!/bin/bash
# Stand-in for the official image's /docker_start.sh: make sure this machine is registered
# with its own LAPI (a fresh database volume has no machines), then run CrowdSec in the
# foreground. The official script does far more (hub update, collections from the
# environment, GeoIP, bouncer keys from the environment); see docs/deploy.md.
set -uo pipefail
cfg=/etc/crowdsec/config.yaml
creds=/etc/crowdsec/local_api_credentials.yaml
# crowdsec-milter's init script may hold the database at the same moment: retry.
for _ in $(seq 30); do
  if cscli -c "$cfg" machines list -o json 2>/dev/null | grep -q '"localhost"'; then
    break
  fi
  cscli -c "$cfg" machines add localhost --auto --force -f "$creds" >/dev/null 2>&1 && break
  sleep 1
done
exec crowdsec -c "$cfg"
