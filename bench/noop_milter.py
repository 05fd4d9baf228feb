"""Do-nothing pymilter milters, the Python peers of the benchmarks.

usage: noop_milter.py SOCKET accept|reject|PROTOCOL [RCPT_MACROS]

  accept    ACCEPT at connect, nothing else asked (the cheapest any pymilter milter is)
  reject    REJECT at connect (the same work as crowdsec-milter refusing a banned client)
  PROTOCOL  hex SMFIP_* bits: asks for exactly those steps (ANDed with what the MTA offers),
            answers CONTINUE, or NOREPLY where the no-reply bit was agreed, reads
            {rcpt_mailer} at RCPT and ACCEPTs at DATA: crowdsec-milter's protocol, no work.
            RCPT_MACROS, if given, is asked for the RCPT stage (setsymlist).
"""

from __future__ import annotations

import sys

import Milter


class AcceptAtConnect(Milter.Base):
    """ACCEPT at connect; pymilter's default negotiation drops every other step."""

    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        return Milter.ACCEPT


class RejectAtConnect(Milter.Base):
    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        self.setreply("554", "5.7.1", "go away")
        return Milter.REJECT


def same_protocol(wanted: int, rcpt_macros: str) -> type[Milter.Base]:
    """A do-nothing class asking for exactly `wanted` (negotiate answered directly)."""

    class Same(Milter.Base):
        def negotiate(self, opts):  # type: ignore[no-untyped-def]
            self._protocol = opts[1] = opts[1] & wanted
            opts[2] = opts[3] = 0
            if rcpt_macros and opts[0] & Milter.SETSYMLIST:
                self._ctx.setsymlist(Milter.M_ENVRCPT, rcpt_macros)  # pymilter 1.0.5 passes bytes
            return Milter.CONTINUE

        def _nr(self, bit: int) -> int:
            return Milter.NOREPLY if self._protocol & bit else Milter.CONTINUE

        def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
            return self._nr(Milter.P_NR_CONN)

        def hello(self, hostname):  # type: ignore[no-untyped-def]
            return self._nr(Milter.P_NR_HELO)

        def envfrom(self, f, *s):  # type: ignore[no-untyped-def]
            return self._nr(Milter.P_NR_MAIL)

        def envrcpt(self, to, *s):  # type: ignore[no-untyped-def]
            self.getsymval("{rcpt_mailer}")
            return self._nr(Milter.P_NR_RCPT)

        def data(self):  # type: ignore[no-untyped-def]
            return Milter.ACCEPT

    return Same


if __name__ == "__main__":
    mode = sys.argv[2]
    if mode == "accept":
        Milter.factory = AcceptAtConnect
    elif mode == "reject":
        Milter.factory = RejectAtConnect
    else:
        Milter.factory = same_protocol(int(mode, 16), sys.argv[3] if sys.argv[3:] else "")
        if sys.argv[3:]:
            Milter.set_flags(Milter.SETSYMLIST)
    Milter.runmilter("noop", sys.argv[1], 600)
