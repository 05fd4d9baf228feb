"""The demo: crowdsec-milter in front of a real Postfix, asking a real CrowdSec, on loopback.

It starts a private CrowdSec LAPI and a private Postfix, runs crowdsec-milter between them,
bans 203.0.113.66 with cscli, and shows that client rejected and another accepted.
Everything lives in a temporary folder and stops at the end (--keep leaves it running).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

from milter_process import MilterProcess  # noqa: E402
from real_crowdsec import CrowdSec  # noqa: E402
from real_postfix import Postfix, Transcript, session  # noqa: E402

BANNED, CLEAN = "203.0.113.66", "192.0.2.25"


def show(title: str, t: Transcript) -> None:
    print(f"\n--- {title} ---")
    for cmd, code, text in t.replies:
        print(f"  C: {cmd:<24} S: {code} {text[:90]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crowdsec-milter-demo-"))
    print(f"demo folder: {work}")
    cs = CrowdSec(work / "crowdsec").start()
    print(f"CrowdSec LAPI (Debian's crowdsec) up on {cs.lapi_url}")
    key = cs.add_bouncer("crowdsec-milter-demo")
    milter = MilterProcess(work, cs.lapi_url, key, "--update-frequency", "1").start()
    print(f"crowdsec-milter up on inet:{milter.port}@127.0.0.1 (stream mode)")
    postfix = Postfix(work / "postfix", f"inet:127.0.0.1:{milter.port}").start()
    print(f"Postfix up on 127.0.0.1:{postfix.port} with smtpd_milters = "
          f"{{ inet:127.0.0.1:{milter.port}, default_action=accept }}")
    try:
        show(f"client {CLEAN} (no decision)",
             session(postfix.port, CLEAN, rcpts=["bob@example.org"]))
        print(f"\n$ cscli decisions add --ip {BANNED} --type ban --duration 10m")
        cs.add_decision(ip=BANNED, duration="10m", reason="demo")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            t = session(postfix.port, BANNED, rcpts=["bob@example.org"])
            if t.code("MAIL") == 550:
                break
            time.sleep(0.3)
        show(f"client {BANNED} (banned)", t)
        ok = t.code("MAIL") == 550 and "blocked by CrowdSec" in t.text()
        print("\nmilter log:")
        for line in milter.log().splitlines():
            if "client=" in line or "resync" in line or "delta" in line:
                print("  " + line)
        print("\nRESULT: " + ("banned client rejected by Postfix, clean client accepted"
                              if ok else "the banned client was NOT rejected"))
        if args.keep:
            print("\n--keep: running; press Ctrl-C to stop")
            signal.pause()
        return 0 if ok else 1
    finally:
        postfix.stop()
        milter.stop()
        cs.stop()


if __name__ == "__main__":
    sys.exit(main())
