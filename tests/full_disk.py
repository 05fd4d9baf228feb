"""Run inside a private mount namespace by tests/test_event_sinks.py: an EventWriter
writing to a real 64 KiB tmpfs until it is full, then again once space is freed.
Prints the writer's counters and the file as one JSON document."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from crowdsec_milter.events import EventWriter
from eventschema import sample


def main(folder: str) -> None:
    filler = Path(folder, "filler")
    filler.write_bytes(b"x" * 16384)  # freed later: room for lines after the disk was full
    path = Path(folder, "events.log")
    writer = EventWriter(str(path))
    writer.start()
    first, later = 300, 20
    for n in range(first):
        writer.emit("rcpt_rejected", **sample("rcpt_rejected", client_ip="192.0.2.1",
                                              queue_id=f"{n:04d}", reason="r" * (n % 97)))
    deadline = time.monotonic() + 20
    while writer.written + writer.dropped < first and time.monotonic() < deadline:
        time.sleep(0.02)
    full = {"written": writer.written, "dropped": writer.dropped}
    filler.unlink()
    for n in range(first, first + later):
        writer.emit("rcpt_rejected", **sample("rcpt_rejected", client_ip="192.0.2.1",
                                              queue_id=f"{n:04d}"))
    writer.stop()
    print(json.dumps({"full": full, "written": writer.written, "dropped": writer.dropped,
                      "emitted": first + later, "free": os.statvfs(folder).f_bavail,
                      "text": path.read_text(errors="replace")}))


if __name__ == "__main__":
    main(sys.argv[1])
