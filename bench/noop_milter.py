"""A do-nothing pymilter milter that keeps every callback (the naive baseline).

usage: noop_milter.py SOCKET [accept]
"""

from __future__ import annotations

import sys

import Milter


class Noop(Milter.Base):
    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def hello(self, hostname):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def envfrom(self, f, *s):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def envrcpt(self, to, *s):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def data(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def header(self, field, value):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def eoh(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def body(self, chunk):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def eom(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE


class AcceptAtConnect(Milter.Base):
    """The cheapest possible milter: ACCEPT at connect, nothing else asked (the floor)."""

    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        return Milter.ACCEPT


if __name__ == "__main__":
    Milter.factory = AcceptAtConnect if sys.argv[2:] == ["accept"] else Noop
    Milter.runmilter("noop", sys.argv[1], 600)
