"""File descriptors: the limit raised at start, and idle milter connections kept from
using them all up.

libmilter owns the accept loop and gives every connection a thread that waits up to
`milter_timeout` (600 s) for a command; pymilter offers no hook before the first one. The
milter's socket is normally loopback or unix, so any local user can open connections that
send nothing. Once descriptors run out, accept() fails with EMFILE, libmilter retries at
once (a busy loop), real MTA sessions wait unanswered and the stream pull cannot open its
connection. So a thread of our own looks at the milter's connections (found through
/proc/self/fd, or by trying every descriptor number when even listing it fails for want of
one) and shuts down, never closes, those a client holds idle: libmilter's thread then sees
the end of the connection and closes it itself.

- A TCP connection that sent no byte in FIRST_COMMAND seconds is shut down: an MTA sends
  its option negotiation as soon as it connects.
- When open descriptors reach HIGH of the limit, connections idle for MIN_IDLE seconds or
  more, or silent from their start, are shut down until they are back at LOW: first those
  of the client holding the most connections, its longest idle first. A client is the
  local user owning the other end (SO_PEERCRED on a unix socket, /proc/net/tcp on
  loopback), else the peer address; so Postfix's sessions are the last to go, whatever
  one local user opens. Idle time on
  TCP is the kernel's time since data last came (TCP_INFO); a unix socket keeps none, so
  there it is the time since the guard first saw the connection.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import resource
import socket
import stat
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger("crowdsec_milter.guard")

TICK = 0.25  # seconds between two looks at the descriptors
FIRST_COMMAND = 10.0  # seconds a TCP connection may stay silent from its start
MIN_IDLE = 1.0  # seconds: a connection busier than this is never shed
HIGH = 7 / 8  # of the soft limit: shed idle connections from here...
LOW = 3 / 4  # ...down to here
REPORT_EVERY = 60.0  # seconds between two warnings about shed connections
SPARE = 20  # a full look waits 20 times its own cost: at most 5 % of a core...
PRESSED = 4  # ...and 20 % under pressure
_TCP_INFO_LAST_RECV = 52  # struct tcp_info: tcpi_last_data_recv, u32 milliseconds
_TCP_INFO_BYTES_RECEIVED = 128  # tcpi_bytes_received, u64 (Linux 4.1 and later)
_ESTABLISHED = "01"  # the st column of /proc/net/tcp


def raise_fd_limit() -> tuple[int, int]:
    """Soft limit of open files up to the hard one (systemd's default soft limit is 1024,
    which idle connections exhaust); (soft, hard) after, logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
    log.info("open files: %d (hard limit %s)", soft,
             "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft, hard


@dataclass
class Conn:
    """One accepted milter connection, as the guard sees it."""

    fd: int
    inode: int
    client: str
    idle: float  # seconds
    silent: bool  # TCP: no byte ever received


def listen_address(spec: str) -> tuple[int, object] | None:
    """(family, local address to match) of the milter's --socket spec; None when unknown.
    For inet the port alone is matched (the host may be a wildcard)."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        return socket.AF_UNIX, rest
    if kind in ("inet", "inet6"):
        with contextlib.suppress(ValueError):
            return (socket.AF_INET6 if kind == "inet6" else socket.AF_INET), \
                int(rest.partition("@")[0])
    return None


def _proc_net_address(text: str) -> tuple[str, int]:
    """'0100007F:1F4B' (or the 32-digit IPv6 form) from /proc/net/tcp as (address, port)."""
    host, _, port = text.partition(":")
    raw = b"".join(struct.pack("<I", int(host[i:i + 8], 16)) for i in range(0, len(host), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return str(ipaddress.ip_address(socket.inet_ntop(family, raw))), int(port, 16)


class IdleGuard:
    """The thread that keeps idle milter connections from taking every descriptor."""

    def __init__(self, spec: str, tick: float = TICK) -> None:
        self._address = listen_address(spec)
        self._tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_seen: dict[tuple[int, int], float] = {}
        self._next_pressed = 0.0
        # Kept open: read again (from offset 0) with no new descriptor, even at the limit.
        self._proc_net: list[int] = []
        self.shed = 0
        self._reported = 0
        self._last_report = -REPORT_EVERY

    def start(self) -> None:
        if self._address is None:
            return
        if self._address[0] != socket.AF_UNIX:
            for name in ("/proc/net/tcp", "/proc/net/tcp6"):
                with contextlib.suppress(OSError):
                    self._proc_net.append(os.open(name, os.O_RDONLY | os.O_CLOEXEC))
        self._thread = threading.Thread(target=self._run, name="idle-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for fd in self._proc_net:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._proc_net = []

    def _run(self) -> None:
        next_full = 0.0
        while not self._stop.wait(self._tick):
            try:
                next_full = self.check(next_full)
            except Exception:  # a bug here must not end the guard
                log.exception("idle connection guard")

    def check(self, next_full: float) -> float:
        """One look: count the open descriptors (cheap); read every connection (about 40 us
        each) when they near the limit or at `next_full`; shed what must go. Returns when
        the next full look may come: FIRST_COMMAND / 2 seconds on, never sooner than
        SPARE times its own cost (PRESSED times under pressure), to bound the CPU it takes."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            fds = [int(name) for name in os.listdir("/proc/self/fd")]
            exhausted = False
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            fds, exhausted = list(range(min(limit, 1 << 20))), True
        now = time.monotonic()
        pressure = exhausted or len(fds) >= limit * HIGH
        if now < next_full and not (pressure and now >= self._next_pressed):
            return next_full
        conns = self.connections(fds, now, identify=pressure)
        cost = time.monotonic() - now
        self._next_pressed = now + cost * PRESSED
        victims = [c for c in conns if c.silent and c.idle >= FIRST_COMMAND]
        if pressure:
            excess = (limit if exhausted else len(fds)) - int(limit * LOW)
            held = Counter(c.client for c in conns)
            chosen = {c.fd for c in victims}
            idle = sorted((c for c in conns if (c.silent or c.idle >= MIN_IDLE)
                           and c.fd not in chosen),
                          key=lambda c: (-held[c.client], -c.idle))
            victims += idle[:max(0, excess - len(victims))]
        if victims:
            self._shed(victims, conns, len(fds), limit)
        return now + max(FIRST_COMMAND / 2, cost * SPARE)

    def connections(self, fds: list[int], now: float, identify: bool = True) -> list[Conn]:
        """The accepted connections of the milter's socket among `fds`; `identify` names
        loopback TCP clients by user (a read of /proc/net/tcp, done under pressure only)."""
        assert self._address is not None
        family, local = self._address
        found: list[Conn] = []
        seen: set[tuple[int, int]] = set()
        for fd in fds:
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if not stat.S_ISSOCK(st.st_mode):
                continue
            conn = self._conn(fd, st.st_ino, family, local, now)
            if conn is not None:
                found.append(conn)
                seen.add((fd, st.st_ino))
        for key in list(self._first_seen):
            if key not in seen:
                del self._first_seen[key]
        if family != socket.AF_UNIX and identify:
            self._owners(found)
        return found

    def _conn(self, fd: int, inode: int, family: int, local: object,
              now: float) -> Conn | None:
        # No new descriptor: the object is detached below, never closed. The family given
        # spares three getsockopt calls; getsockname reports the real one all the same.
        sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        try:
            name = sock.getsockname()
            if family == socket.AF_UNIX:
                if name != local or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    return None
                _pid, uid, _gid = struct.unpack(
                    "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                first = self._first_seen.setdefault((fd, inode), now)
                return Conn(fd, inode, f"uid {uid}", now - first, False)
            if not isinstance(name, tuple) or name[1] != local:
                return None
            peer = sock.getpeername()  # the listening socket has none: OSError
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
            idle = struct.unpack_from("<I", info, _TCP_INFO_LAST_RECV)[0] / 1000
            silent = len(info) >= 136 and \
                struct.unpack_from("<Q", info, _TCP_INFO_BYTES_RECEIVED)[0] == 0
            return Conn(fd, inode, f"ip {peer[0]}:{peer[1]}", idle, silent)
        except OSError:
            return None
        finally:
            sock.detach()

    def _owners(self, conns: list[Conn]) -> None:
        """Name loopback clients by the user owning the other end (/proc/net/tcp lists
        it), so one local user's connections are told from Postfix's; others by address.
        An entry counts only if it is an open connection to the milter's port: the same
        local port may serve other connections, or linger in TIME_WAIT (listed as uid 0)."""
        assert self._address is not None
        milter_port = self._address[1]
        owners: dict[tuple[str, int], str] = {}
        for fd in self._proc_net:
            with contextlib.suppress(OSError, ValueError):
                os.lseek(fd, 0, os.SEEK_SET)
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                for line in b"".join(chunks).decode("ascii", "replace").splitlines()[1:]:
                    fields = line.split()
                    if len(fields) > 7 and fields[3] == _ESTABLISHED and \
                            int(fields[2].rpartition(":")[2], 16) == milter_port:
                        owners[_proc_net_address(fields[1])] = fields[7]
        for conn in conns:
            address, _, port = conn.client[3:].rpartition(":")
            uid = owners.get((str(ipaddress.ip_address(address.strip("[]"))), int(port)))
            conn.client = f"uid {uid}" if uid is not None else f"ip {address}"

    def _shed(self, victims: list[Conn], conns: list[Conn], fds: int, limit: int) -> None:
        shed = 0
        for conn in victims:
            with contextlib.suppress(OSError):
                if os.fstat(conn.fd).st_ino != conn.inode:
                    continue  # closed meanwhile, the number reused: not ours to end
                sock = socket.socket(fileno=conn.fd)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    shed += 1
                finally:
                    sock.detach()
        self.shed += shed
        now = time.monotonic()
        if now - self._last_report >= REPORT_EVERY:
            top, count = Counter(c.client for c in conns).most_common(1)[0]
            log.warning("closed %d idle milter connection(s) (%d since the last report): "
                        "%d open files of %d, %d milter connection(s), the most (%d) held "
                        "by %s", shed, self.shed - self._reported, fds, limit, len(conns),
                        count, top)
            self._reported = self.shed
            self._last_report = now
