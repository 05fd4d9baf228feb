#!/usr/bin/env bash
# Tests the built .deb the way a postmaster uses it, on a pristine Debian 12 or 13 root
# filesystem (debootstrap --variant=minbase), as root, from the repository's folder:
#   install Debian's postfix and crowdsec (offline), then `apt install ./crowdsec-milter_*.deb`
#   from the mirror alone (no compiler, nothing from PyPI); the bouncer key registered; the
#   unit verified; the milter run as its unit runs it in front of the packaged Postfix with
#   the lines postinst printed, and the packaged CrowdSec started by hand: a banned client
#   rejected, a dictionary attack banned through the content the package installed; an
#   upgrade keeps an edited conffile; remove and reinstall; purge leaves no file behind and
#   no bouncer.
# systemd is not PID 1 in such a root: daemons are kept from starting (policy-rc.d) and the
# test starts CrowdSec, Postfix and the milter itself, on free loopback ports.
#
# Usage: bash packaging/test-deb.sh dist/crowdsec-milter_VERSION_all.deb
set -euo pipefail
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 path/to/crowdsec-milter_VERSION_all.deb" >&2; exit 2; }
deb=$(realpath "$1")
export DEBIAN_FRONTEND=noninteractive
work=$(mktemp -d /tmp/test-deb.XXXXXX)
pids=()
step_name='' step_start=0 report=''

step() {
    if [ -n "$step_name" ]; then
        report+=$(printf '%6ss  %s' "$((SECONDS - step_start))" "$step_name")$'\n'
    fi
    step_name=$1 step_start=$SECONDS
    printf '== test-deb: %s (at %ss)\n' "$1" "$SECONDS"
}
fail() {
    for log in "$work"/crowdsec.out "$work"/milter.out /var/log/postfix.log; do
        [ -s "$log" ] && { echo "-- last lines of $log" >&2; tail -n 15 "$log" >&2; }
    done
    echo "test-deb: FAILED: $*" >&2
    exit 1
}
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    postfix stop > /dev/null 2>&1 || true
}
trap cleanup EXIT
# wait_for SECONDS COMMAND...: until COMMAND succeeds, or fail
wait_for() {
    local limit=$(( SECONDS + $1 )); shift
    until "$@" > /dev/null 2>&1; do
        [ $SECONDS -lt $limit ] || return 1
        sleep 0.5
    done
}

# Everything but the package's own business: apt's and dpkg's records and caches, and the
# state of the daemons this test runs (Postfix's queue and log, CrowdSec's database and log).
snapshot() {
    find / -xdev \( -path "$PWD" -o -path /var/lib/dpkg -o -path /var/lib/apt \
        -o -path /var/cache/apt -o -path /var/cache/debconf -o -path /var/log/apt \
        -o -path /var/spool/postfix -o -path /var/lib/postfix -o -path /var/lib/crowdsec/data \
        -o -path /var/mail \) -prune -o -print \
        | grep -vE '^/var/log/(dpkg\.log|alternatives\.log|postfix\.log|crowdsec.*\.log)$' \
        | grep -vE '^/usr/lib/python3\.[0-9]+/.*__pycache__' | sort
}

step "prerequisites: policy-rc.d, offline CrowdSec, Postfix, test tools"
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
mkdir -p /etc/crowdsec
# crowdsec's postinst registers with the Central API unless this file is there and not empty
[ -s /etc/crowdsec/online_api_credentials.yaml ] \
    || echo '# offline: no Central API' > /etc/crowdsec/online_api_credentials.yaml
echo "postfix postfix/main_mailer_type select Internet Site" | debconf-set-selections
echo "postfix postfix/mailname string mx.test.example" | debconf-set-selections
apt-get update -q > "$work/apt-update.log" || { cat "$work/apt-update.log"; exit 1; }
apt-get install -y -q --no-install-recommends postfix crowdsec swaks python3 systemd procps \
    logrotate > "$work/apt-prereq.log" 2>&1 || { tail -n 40 "$work/apt-prereq.log"; exit 1; }
apt-get clean
snapshot > "$work/before.list"

step "apt install ./$(basename "$deb") ($(stat -c %s "$deb") bytes)"
cp "$deb" "$work/"
t0=$SECONDS
apt-get install -y -q --no-install-recommends "$work/$(basename "$deb")" 2>&1 | tee "$work/install.log"
install_time=$((SECONDS - t0))
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "apt install"
echo "installed in ${install_time}s"

step "no compiler, nothing from PyPI"
for pkg in gcc cpp python3-dev python3-pip libmilter-dev; do
    if dpkg -s "$pkg" > /dev/null 2>&1; then fail "$pkg is installed"; fi
done
[ -z "$(find /usr/local/lib -name '*.py' -print -quit 2> /dev/null)" ] || fail "Python files in /usr/local/lib"
python3 - <<'PY' > "$work/modules"
import importlib
for name in ("crowdsec_milter", "Milter", "milter", "httpx", "httpcore", "cachetools",
             "configargparse", "prometheus_client", "maxminddb"):
    print(importlib.import_module(name).__file__)
PY
while read -r file; do
    case $file in /usr/lib/python3/dist-packages/*) ;; *) fail "$file is not Debian's" ;; esac
    dpkg -S "$file" > /dev/null || fail "$file belongs to no package"
done < "$work/modules"
echo "every module from a Debian package: $(tr '\n' ' ' < "$work/modules")"
crowdsec-milter --version

step "what the package set up: user, files, key, bouncer, CrowdSec content, unit"
getent passwd crowdsec-milter | grep -q ':/nonexistent:/usr/sbin/nologin$' || fail "user"
getent group crowdsec-milter > /dev/null || fail "group"
[ "$(stat -c '%U:%G %a' /var/log/crowdsec-milter)" = "crowdsec-milter:crowdsec-milter 755" ] \
    || fail "log folder: $(stat -c '%U:%G %a' /var/log/crowdsec-milter)"
[ "$(stat -c '%U:%G %a' /var/lib/crowdsec-milter)" = "crowdsec-milter:crowdsec-milter 700" ] \
    || fail "state folder: $(stat -c '%U:%G %a' /var/lib/crowdsec-milter)"
[ "$(stat -c '%U:%G %a' /etc/crowdsec-milter/key)" = "root:crowdsec-milter 640" ] \
    || fail "key file: $(stat -c '%U:%G %a' /etc/crowdsec-milter/key)"
bouncer=$(cat /var/lib/crowdsec-milter-package/bouncer)
cscli bouncers list -o raw | grep -q "^$bouncer," || fail "bouncer $bouncer not in cscli bouncers list"
dpkg-query --control-show crowdsec-milter conffiles | grep -qx '/etc/crowdsec-milter/crowdsec-milter.conf' \
    || fail "the config is no conffile"
for item in parsers/s01-parse/crowdsec-milter-logs.yaml acquis.d/crowdsec-milter.yaml \
            scenarios/crowdsec-milter-dictionary-attack.yaml collections/crowdsec-milter.yaml; do
    [ ! -L "/etc/crowdsec/$item" ] && cmp "/usr/share/crowdsec-milter/crowdsec/$item" "/etc/crowdsec/$item" \
        || fail "/etc/crowdsec/$item is not a copy of the shipped one"
done
unit=$(dpkg -L crowdsec-milter | grep '/systemd/system/crowdsec-milter.service$')
# enabled at install because a key was registered (systemd, not running, keeps the link)
[ -L /etc/systemd/system/multi-user.target.wants/crowdsec-milter.service ] || fail "unit not enabled"
systemd-analyze verify "$unit" 2>&1 | tee "$work/verify.log"
[ ! -s "$work/verify.log" ] || fail "systemd-analyze verify $unit"
logrotate -d /etc/logrotate.d/crowdsec-milter > "$work/logrotate.log" 2>&1 || { cat "$work/logrotate.log"; fail "logrotate"; }
# the lines postinst printed for Postfix's main.cf
awk '/add these lines to \/etc\/postfix\/main.cf/ {on=1; next} on && /^  / {sub(/^  /, ""); print; next} on {exit}' \
    "$work/install.log" > "$work/main.cf.lines"
grep -q '^smtpd_milters = ' "$work/main.cf.lines" || fail "postinst printed no main.cf lines"
cat "$work/main.cf.lines"

step "CrowdSec started by hand on a free port"
read -r lapi_port milter_port metrics_port smtp_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cfg=/etc/crowdsec/config.yaml
sed -i -e '/online_client:/,/credentials_path: .*online_api_credentials/d' \
    -e "s|listen_uri: .*|listen_uri: 127.0.0.1:$lapi_port|" -e 's/daemonize: true/daemonize: false/' \
    -e 's/log_media: file/log_media: stdout/' \
    -e '/^prometheus:/,/^[a-z]/s/enabled: true/enabled: false/' "$cfg"
sed -i "s|^url: .*|url: http://127.0.0.1:$lapi_port|" /etc/crowdsec/local_api_credentials.yaml
# no journal in a root filesystem without systemd: journalctl would exit at once, and with
# it CrowdSec's whole acquisition; drop the journalctl sources of Debian's acquis.yaml
python3 - <<'PY'
path = "/etc/crowdsec/acquis.yaml"
docs = open(path).read().split("\n---")
open(path, "w").write("\n---".join(d for d in docs if "journalctl" not in d))
PY
crowdsec -c "$cfg" > "$work/crowdsec.out" 2>&1 &
pids+=($!)
wait_for 60 python3 -c "import urllib.request, sys
try: urllib.request.urlopen('http://127.0.0.1:$lapi_port/v1/decisions', timeout=2)
except urllib.error.HTTPError: sys.exit(0)" || { tail -n 30 "$work/crowdsec.out"; fail "LAPI did not start"; }
# the agent loaded the scenarios the package installed
for name in dictionary-attack dictionary-attack-slow relay-probe spam-trap; do
    wait_for 60 grep -Eq "name=\"?crowdsec-milter/$name(\"| |$)" "$work/crowdsec.out" \
        || { cat "$work/crowdsec.out"; fail "scenario $name not loaded"; }
done

step "the milter as its unit runs it (ExecStart, User=, UMask=, Type=notify)"
conf=/etc/crowdsec-milter/crowdsec-milter.conf
# the postmaster's edits: the free ports of this test, and a quick pull
sed -i -e "s|^socket = .*|socket = inet:$milter_port@127.0.0.1|" \
    -e "s|^lapi-url = .*|lapi-url = http://127.0.0.1:$lapi_port/|" \
    -e "s|^metrics-listen = .*|metrics-listen = 127.0.0.1:$metrics_port|" \
    -e "s|^update-frequency = .*|update-frequency = 1|" "$conf"
cp "$conf" "$work/conf.edited"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
user=$(sed -n 's/^User=//p' "$unit") group=$(sed -n 's/^Group=//p' "$unit")
umask_=$(sed -n 's/^UMask=//p' "$unit")
grep -qx 'Type=notify' "$unit" || fail "unit is not Type=notify"
mkdir -p /run/test-deb
python3 - /run/test-deb/notify "$work/notify.log" <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
s.settimeout(120)
with open(sys.argv[2], "w") as log:
    while True:
        msg = s.recv(4096).decode()
        log.write(msg + "\n")
        log.flush()
        if "READY=1" in msg.split("\n"):
            break
PY
notify_pid=$!
wait_for 10 test -S /run/test-deb/notify || fail "notify socket"
(umask "$umask_"; NOTIFY_SOCKET=/run/test-deb/notify exec setpriv --reuid="$user" \
    --regid="$group" --init-groups --no-new-privs -- $exec_start) > "$work/milter.out" 2>&1 &
pids+=($!)
wait "$notify_pid" || { cat "$work/milter.out"; fail "no READY=1 from the milter"; }
echo "notify: $(tr '\n' ' ' < "$work/notify.log")"
grep -q 'readable by other users' "$work/milter.out" && fail "the key file warning fired"
ps_user=$(stat -c %U "/proc/${pids[-1]}")
[ "$ps_user" = crowdsec-milter ] || fail "the milter runs as $ps_user"

step "Postfix with the printed lines (a private SMTP port, XCLIENT from loopback)"
main_cf_lines=$(sed "s/127\.0\.0\.1:8895/127.0.0.1:$milter_port/" "$work/main.cf.lines")
while IFS= read -r line; do postconf -e "$line"; done <<< "$main_cf_lines"
postconf -e 'mydestination = example.org, localhost' 'inet_interfaces = loopback-only' \
    'smtpd_authorized_xclient_hosts = 127.0.0.0/8' 'maillog_file = /var/log/postfix.log'
postconf -MX smtp/inet
postconf -Me "127.0.0.1:$smtp_port/inet=127.0.0.1:$smtp_port inet n - n - - smtpd"
postfix start
wait_for 30 python3 -c "import socket; socket.create_connection(('127.0.0.1', $smtp_port), 2)" \
    || fail "Postfix does not listen"
smtp() { swaks --server "127.0.0.1:$smtp_port" --xclient-addr "$1" --from a@example.net \
             --to postmaster@example.org --quit-after RCPT 2>&1; }
smtp 192.0.2.10 > "$work/swaks.ok" || { cat "$work/swaks.ok"; fail "a clean client was refused"; }

step "a banned client is rejected"
cscli decisions add --ip 203.0.113.50 --duration 10m --reason test-deb > /dev/null
# A reject at connect: Postfix refuses the client's next command (here XCLIENT's new session)
# with its own 554, and logs the milter's reply.
banned() {
    ! smtp "$1" > "$work/swaks.$1" && grep -Eq '^<\*\* +554 ' "$work/swaks.$1" \
        && grep -q "milter-reject: .*\[$1\]: 550 5.7.1 $1 is blocked by CrowdSec" /var/log/postfix.log
}
wait_for 30 banned 203.0.113.50 || { cat "$work/swaks.203.0.113.50"; fail "203.0.113.50 not rejected"; }
grep -E '^<\*\* +554 ' "$work/swaks.203.0.113.50"
grep "milter-reject: .*\[203.0.113.50\]" /var/log/postfix.log | tail -n 1
smtp 192.0.2.10 > "$work/swaks.ok" || fail "a clean client was refused after the ban"

step "a dictionary attack gets banned through the package's CrowdSec content"
python3 - "$smtp_port" <<'PY'
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.ehlo("attacker.test")
    code, _ = s.docmd("XCLIENT", "ADDR=198.51.100.66 NAME=[UNAVAILABLE]")
    assert code == 220, code
    s.ehlo("attacker.test")
    assert s.mail("a@example.net")[0] == 250
    codes = [s.rcpt(f"guess{i}@example.org")[0] for i in range(15)]
    assert codes == [550] * 15, codes
PY
wait_for 60 banned 198.51.100.66 \
    || { tail -n 20 "$work/crowdsec.out"; tail -n 5 /var/log/crowdsec-milter/events.log; fail "attacker not banned"; }
cscli decisions list -o raw | grep '198.51.100.66' | grep -q 'crowdsec-milter/dictionary-attack' \
    || fail "the ban is not from crowdsec-milter/dictionary-attack"
echo "198.51.100.66 banned by crowdsec-milter/dictionary-attack and rejected"

step "upgrade (dpkg -i of the package again) keeps the edited conffile and the key"
kill "${pids[-1]}"; wait "${pids[-1]}" 2> /dev/null || true; unset 'pids[-1]'
key_before=$(sha256sum /etc/crowdsec-milter/key)
dpkg -i "$work/$(basename "$deb")" > "$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "upgrade"; }
cmp "$work/conf.edited" "$conf" || fail "the upgrade lost the conffile edits"
[ "$(sha256sum /etc/crowdsec-milter/key)" = "$key_before" ] || fail "the upgrade changed the key"
[ "$(cscli bouncers list -o raw | grep -c '^crowdsec-milter-')" = 1 ] || fail "a second bouncer"

step "apt remove, then reinstall"
apt-get remove -y -q crowdsec-milter > "$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "remove"; }
[ ! -e /etc/crowdsec/parsers/s01-parse/crowdsec-milter-logs.yaml ] || fail "CrowdSec content left after remove"
[ -f "$conf" ] && [ -s /etc/crowdsec-milter/key ] || fail "remove took the config or key"
apt-get install -y -q --no-install-recommends "$work/$(basename "$deb")" > "$work/reinstall.log" 2>&1 \
    || { cat "$work/reinstall.log"; fail "reinstall"; }
[ -f /etc/crowdsec/parsers/s01-parse/crowdsec-milter-logs.yaml ] || fail "CrowdSec content not installed again"
cmp "$work/conf.edited" "$conf" || fail "the reinstall lost the conffile edits"
[ "$(cscli bouncers list -o raw | grep -c '^crowdsec-milter-')" = 1 ] || fail "a second bouncer"

step "apt purge leaves no file, no user, no bouncer"
apt-get purge -y -q --autoremove crowdsec-milter > "$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "purge"; }
apt-get clean
! getent passwd crowdsec-milter > /dev/null || fail "user left"
! getent group crowdsec-milter > /dev/null || fail "group left"
! cscli bouncers list -o raw | grep -q '^crowdsec-milter' || fail "bouncer left: $(cscli bouncers list -o raw)"
snapshot > "$work/after.list"
if ! diff "$work/before.list" "$work/after.list" > "$work/files.diff"; then
    cat "$work/files.diff"; fail "purge left the file system changed"
fi

step done
printf '%s' "$report"
printf 'the .deb: %s bytes; apt install: %ss; all steps: %ss\n' "$(stat -c %s "$deb")" \
    "$install_time" "$SECONDS"
echo "test-deb: passed"
