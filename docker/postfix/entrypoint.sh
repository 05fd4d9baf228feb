#!/bin/sh
# Configures Postfix for crowdsec-milter and runs it in the foreground, logging to stdout.
# --configure-only writes the configuration into POSTFIX_CONFIG_DIR and checks it.
set -eu
dir="${POSTFIX_CONFIG_DIR:-/etc/postfix}"
milter="${MILTER_ADDRESS:-inet:milter:8895}"
[ -f "$dir/master.cf" ] || cp /etc/postfix/master.cf "$dir/master.cf"
[ -f "$dir/main.cf" ] || : > "$dir/main.cf"
postconf -c "$dir" -e \
  "myhostname=${MYHOSTNAME:-mx.example.org}" \
  "mydestination=${MYDESTINATION:-example.org, localhost}" \
  "inet_protocols=all" \
  "maillog_file=/dev/stdout" \
  "smtpd_milters={ $milter, default_action=accept }" \
  "milter_protocol=6" \
  "milter_default_action=accept" \
  "milter_connect_macros=j {daemon_name} {daemon_addr} v _ {client_name}" \
  "milter_rcpt_macros=i {rcpt_addr} {rcpt_host} {rcpt_mailer}"
postfix -c "$dir" check
if [ "${1:-}" = "--configure-only" ]; then
  exit 0
fi
exec postfix -c "$dir" start-fg
