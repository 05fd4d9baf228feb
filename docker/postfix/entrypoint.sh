#!/bin/sh
# Configures Postfix for crowdsec-milter and runs it in the foreground, logging to stdout.
#   --configure-only   write the configuration into POSTFIX_CONFIG_DIR, check it, and exit
# Settings (environment):
#   MILTER_ADDRESS     the milter, as smtpd_milters wants it (inet:milter:8895)
#   MYHOSTNAME, MYDESTINATION
#   LOCAL_RECIPIENTS   local parts that exist; every other one at MYDESTINATION gets
#                      "550 5.1.1 User unknown", which the milter reports to CrowdSec
#   LOCAL_TRANSPORT    where accepted local mail goes: discard: (a demo) or e.g.
#                      lmtp:inet:mailstore:24
#   INET_PROTOCOLS     ipv4 (the default), or all where the network has IPv6 (as in
#                      docker-compose.yml)
#   XCLIENT_HOSTS      clients allowed to claim another client address with XCLIENT (a test
#                      harness, a trusted front end); empty (the default): nobody
set -eu
dir="${POSTFIX_CONFIG_DIR:-/etc/postfix}"
milter="${MILTER_ADDRESS:-inet:milter:8895}"
recipients="${LOCAL_RECIPIENTS:-postmaster abuse}"

mkdir -p "$dir"
[ -f "$dir/master.cf" ] || cp /etc/postfix/master.cf "$dir/master.cf"
[ -f "$dir/main.cf" ] || : >"$dir/main.cf"

table=""
for r in $recipients; do
  table="${table:+$table, }$r=ok"
done

postconf -c "$dir" -e \
  "compatibility_level=3.6" \
  "myhostname=${MYHOSTNAME:-mx.example.org}" \
  "mydestination=${MYDESTINATION:-example.org, localhost}" \
  "local_recipient_maps=inline:{ $table }" \
  "alias_maps=" \
  "alias_database=" \
  "local_transport=${LOCAL_TRANSPORT:-discard:}" \
  "smtpd_relay_restrictions=permit_mynetworks, reject_unauth_destination" \
  "inet_protocols=${INET_PROTOCOLS:-ipv4}" \
  "smtpd_authorized_xclient_hosts=${XCLIENT_HOSTS:-}" \
  "maillog_file=/dev/stdout" \
  "smtpd_milters={ $milter, default_action=accept }" \
  "milter_protocol=6" \
  "milter_default_action=accept" \
  "milter_connect_macros=j {daemon_name} {daemon_addr} v _ {client_name}" \
  "milter_rcpt_macros=i {rcpt_addr} {rcpt_host} {rcpt_mailer}"
# No chroot: a chrooted smtpd has no copy of the container's resolv.conf and could not look
# up the milter's host name (and would then skip the milter, default_action=accept).
postconf -c "$dir" -F '*/*/chroot = n'
postfix -c "$dir" check
if [ "${1:-}" = "--configure-only" ]; then
  exit 0
fi
exec postfix -c "$dir" start-fg
