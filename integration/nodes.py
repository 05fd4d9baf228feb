"""One MTA node for the end-to-end tests: the real milter program in front of a private
Postfix, asking a shared real LAPI with a bouncer key of its own."""

from __future__ import annotations

import signal
from pathlib import Path

from milter_process import MilterProcess
from real_crowdsec import CrowdSec
from real_postfix import Postfix, Transcript, session


class Node:
    """A milter (started with `args`) in front of a Postfix; `deliver_to` makes Postfix
    deliver to that local user's mailbox instead of discarding."""

    def __init__(self, workdir: Path, cs: CrowdSec, name: str, *args: str,
                 deliver_to: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = cs.add_bouncer(name)
        self.milter = MilterProcess(workdir, cs.lapi_url, self.key, *args)
        # stream mode is ready once it holds its first pull; live mode at once
        self.milter.start("decision(s) held" if "live" not in args else None)
        self.postfix = Postfix(workdir / "postfix", f"inet:127.0.0.1:{self.milter.port}",
                               deliver_to=deliver_to).start()
        self.rcpt = f"{deliver_to or 'bob'}@example.org"

    def send(self, ip: str, rcpts: tuple[str, ...] | None = None,
             subject: str = "test") -> Transcript:
        return session(self.postfix.port, ip, rcpts=list(rcpts or (self.rcpt,)),
                       subject=subject)

    def stop(self) -> None:
        self.postfix.stop()
        self.milter.stop(signal.SIGKILL)
