"""A private Docker engine for the compose test: Debian's dockerd with its own data root,
exec root, socket, pid file, bridge and address pool, so it clashes with no other engine on
the machine, and stopped by its PID leaving no bridge, firewall rule or forwarding change.

It also runs in CI's fresh root filesystems, if they are entered with pivot_root (a plain
chroot cannot host dockerd: see _LAUNCH). dockerd starts in a mount namespace of its own,
where the cgroup file systems are mounted when /sys/fs/cgroup is empty (a fresh sysfs);
nothing of that is seen outside it.

Base images come from debootstrap (no registry): a minbase bookworm is imported, and the
stand-ins in integration/standins (debian:bookworm-slim, python:3.11-slim-bookworm,
crowdsecurity/crowdsec) are built on it, tagged with the names the project's Dockerfiles and
compose file use.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
CACHE = Path("/var/cache/crowdsec-milter-tests")
CI_TARBALL = Path("/var/cache/crowdsec-milter-ci/bookworm-minbase.tar.gz")
# Debian's binaries first: a docker CLI elsewhere on PATH may not be the engine's own.
PATH = "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin"

# Run in dockerd's own mount namespace: cgroups are mounted if the root has none (a fresh
# sysfs, as in CI's root filesystems), then dockerd. "/" must be the top mount of the
# namespace: in a plain chroot it is not, and although containers then run (after binding
# "/" onto itself), `docker exec` and so every HEALTHCHECK land in the namespace's real root
# instead of the container's (setns looks the root up from the namespace's own root mount).
# A root filesystem entered with pivot_root, not chroot, has it right.
_LAUNCH = r"""
set -eu
if ! awk '$5 == "/" {found = 1} END {exit !found}' /proc/self/mountinfo; then
  echo "dockerd cannot run here: / is not a mount point (a chroot?); enter the root" \
       "filesystem with pivot_root instead of chroot" >&2
  exit 3
fi
mount --make-rprivate /
cg=/sys/fs/cgroup
if [ -d "$cg" ] && [ -z "$(ls -A "$cg")" ]; then
  if awk 'NR > 1 && $4 == 1 && $2 != 0 {v1 = 1} END {exit !v1}' /proc/cgroups; then
    mount -t tmpfs -o mode=755 cgroup "$cg"
    for h in $(awk 'NR > 1 && $4 == 1 {print $2}' /proc/cgroups | sort -u); do
      names=$(awk -v h="$h" 'NR > 1 && $4 == 1 && $2 == h {printf "%s%s", s, $1; s = ","}' \
              /proc/cgroups)
      mkdir -p "$cg/$names"
      mount -t cgroup -o "$names" cgroup "$cg/$names"
    done
    mkdir -p "$cg/systemd"
    mount -t cgroup -o none,name=systemd cgroup "$cg/systemd"
  else
    mount -t cgroup2 cgroup2 "$cg"
  fi
fi
exec "$@"
"""

_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
            "net/ipv6/conf/default/forwarding")


def _run(*args: str, check: bool = True, timeout: float = 600, **kw: object
         ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PATH": PATH}, **kw)  # type: ignore[call-overload]
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return out


def _routes() -> list[ipaddress.IPv4Network]:
    out = _run("ip", "-4", "route", "show", "table", "all").stdout
    nets = []
    for word in re.findall(r"^(?:\S+ )?(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", out, re.M):
        nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def _free_pool() -> ipaddress.IPv4Network:
    """A 10.N.0.0/16 no route on this machine touches (other engines, VPNs, the LAN)."""
    used = _routes()
    candidates = list(range(64, 250))
    random.shuffle(candidates)
    for n in candidates:
        net = ipaddress.ip_network(f"10.{n}.0.0/16")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.N.0.0/16 for a private Docker address pool")


def _rules(cmd: str) -> dict[str, list[str]]:
    """Chains and rules per table, as `iptables-save` prints them (no counters)."""
    tables: dict[str, list[str]] = {}
    current = ""
    for line in _run(f"{cmd}-save", check=False).stdout.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = []
        elif line.startswith((":", "-A")):
            tables[current].append(re.sub(r" \[\d+:\d+\]$", "", line))
    return tables


class Engine:
    """One private dockerd. `start()`, `docker(...)`, `stop()`."""

    def __init__(self, tag: str | None = None) -> None:
        # random, not the PID: runs in PID namespaces of their own have the same small PIDs
        self.tag = tag or f"{random.randrange(100000):05d}"
        self.name = f"cmt{self.tag}"  # bridge name: at most 15 characters
        self.data_root = CACHE / "docker"  # kept between runs: built images are cached
        self.run_dir = Path(f"/run/{self.name}")
        self.sock = self.run_dir / "docker.sock"
        self.pidfile = self.run_dir / "docker.pid"
        self.log = self.run_dir / "dockerd.log"
        self.host = f"unix://{self.sock}"
        self.pool = _free_pool()
        subnets = list(self.pool.subnets(new_prefix=17))
        self.bridge_net = list(subnets[1].subnets(new_prefix=24))[-1]  # 10.N.255.0/24
        self.compose_pool = subnets[0]  # 10.N.0.0/17: the compose networks
        self.proc: subprocess.Popen[bytes] | None = None
        self._before: dict[str, dict[str, list[str]]] = {}
        self._sysctl_before: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": PATH, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True, timeout: float = 600,
               **kw: object) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["docker", *args], capture_output=True, text=True,
                             timeout=timeout, env=self.env, **kw)  # type: ignore[call-overload]
        if check and out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} exited {out.returncode}:\n"
                               f"{out.stdout}{out.stderr}")
        return out

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Engine:
        self._before = {"iptables": _rules("iptables"), "ip6tables": _rules("ip6tables")}
        self._sysctl_before = {k: Path("/proc/sys", k).read_text().strip() for k in _SYSCTLS
                               if Path("/proc/sys", k).exists()}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        gateway = next(self.bridge_net.hosts())
        _run("ip", "link", "add", self.name, "type", "bridge")
        _run("ip", "addr", "add", f"{gateway}/{self.bridge_net.prefixlen}", "dev", self.name)
        _run("ip", "link", "set", self.name, "up")
        args = ["dockerd", "--data-root", str(self.data_root),
                "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.pidfile),
                "--host", self.host, "--bridge", self.name,
                "--default-address-pool", f"base={self.compose_pool},size=24"]
        self._logfile = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", _LAUNCH,
             "launch", *args],
            stdout=self._logfile, stderr=subprocess.STDOUT, env={**os.environ, "PATH": PATH})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dockerd exited at start:\n" + self.log_tail())
            if self.docker("version", check=False, timeout=30).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("dockerd did not answer:\n" + self.log_tail())
        self._forget_leftovers()
        return self

    def _forget_leftovers(self) -> None:
        """Containers, networks and volumes a killed earlier run left in the data root."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        self.docker("network", "prune", "-f")
        self.docker("volume", "prune", "-f")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """dockerd stopped by its PID; then its bridge, rules and forwarding undone."""
        if self.proc is not None:
            pid = int(self.pidfile.read_text()) if self.pidfile.exists() else self.proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            self._logfile.close()
            self.proc = None
        _run("ip", "link", "del", self.name, check=False)
        alone = not self._others()
        self._restore_rules(alone)
        if alone:  # another engine still running needs forwarding on
            for key, value in self._sysctl_before.items():
                Path("/proc/sys", key).write_text(value + "\n")
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _ours(self, line: str) -> bool:
        """A rule about this engine: it names our bridge or an address in our pool."""
        if re.search(rf"(?<![\w-]){self.name}(?![\w-])", line):
            return True
        for word in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", line):
            if ipaddress.ip_network(word, strict=False).subnet_of(self.pool):
                return True
        return False

    def _others(self) -> list[str]:
        """Rules naming interfaces this engine never made: another engine (a parallel run,
        a Docker of the machine's own) shares Docker's chains and needs forwarding on."""
        found = []
        for cmd in self._before:
            for lines in _rules(cmd).values():
                for line in lines:
                    names = re.findall(r"(?:^| )-[io] (\S+)", line)
                    if any(n != self.name and not n.startswith("br-") for n in names) \
                            and not self._ours(line):
                        found.append(line)
        for name in re.findall(r"^\d+: ((?:cmt\d+|docker\d+|br-[0-9a-f]+))[:@]",
                               _run("ip", "-o", "link", "show").stdout, re.M):
            if name != self.name:
                found.append(f"link {name}")
        return found

    def _restore_rules(self, alone: bool) -> None:
        """Deletes the rules dockerd added for this engine since start; when no other engine
        is left, also the chains and jumps it added and the policies it changed."""
        for cmd, before in self._before.items():
            after = _rules(cmd)
            for table, lines in after.items():
                old = before.get(table, [])
                new = [x for x in lines if x.startswith("-A") and x not in old]
                for line in reversed([x for x in new if alone or self._ours(x)]):
                    _run(cmd, "-t", table, "-D", *shlex.split(line[3:]), check=False)
                if not alone:
                    continue
                old_chains = {x.split()[0][1:]: x.split()[1] for x in old if x.startswith(":")}
                for line in lines:
                    if not line.startswith(":"):
                        continue
                    chain, policy = line.split()[0][1:], line.split()[1]
                    if chain not in old_chains:
                        _run(cmd, "-t", table, "-F", chain, check=False)
                        _run(cmd, "-t", table, "-X", chain, check=False)
                    elif policy != "-" and policy != old_chains[chain]:
                        _run(cmd, "-t", table, "-P", chain, old_chains[chain], check=False)

    def leftovers(self) -> list[str]:
        """What this engine left on the machine after stop(): its bridge, rules about it, and,
        when no other engine runs, any rule, chain or forwarding change since start."""
        found = []
        links = _run("ip", "-o", "link", "show").stdout
        if re.search(rf"^\d+: {self.name}[:@]", links, re.M):
            found.append(f"bridge {self.name}")
        alone = not self._others()
        for cmd, before in self._before.items():
            after = _rules(cmd)
            for table, lines in after.items():
                extra = [x for x in lines if x not in before.get(table, [])
                         and (alone or self._ours(x))]
                found += [f"{cmd} -t {table}: {x}" for x in extra]
        for key, value in self._sysctl_before.items():
            now = Path("/proc/sys", key).read_text().strip()
            if alone and now != value:
                found.append(f"{key} = {now} (was {value})")
        return found

    # -- images ----------------------------------------------------------------------------

    def base_image(self, name: str = "debian:bookworm-slim") -> None:
        """A minbase Debian 12 (debootstrap once, tarball cached) imported, then tagged `name`
        through integration/standins/debian."""
        minbase = "crowdsec-milter-minbase:bookworm"
        if self.docker("image", "inspect", minbase, check=False).returncode != 0:
            tarball = CI_TARBALL if CI_TARBALL.exists() else CACHE / "bookworm-minbase.tar.gz"
            if not tarball.exists():
                _debootstrap(tarball)
            with open(tarball, "rb") as f:
                self.docker("import", "-", minbase, stdin=f)
        self.standin(name, STANDINS / "debian")

    def standin(self, name: str, directory: Path) -> None:
        """An image from integration/standins/<directory>, rebuilt when its files change."""
        context = Path(tempfile.mkdtemp(prefix="standin-"))
        try:
            shutil.copytree(directory, context, dirs_exist_ok=True)
            ca = context / "ca"
            ca.mkdir(exist_ok=True)
            extra = Path("/usr/local/share/ca-certificates")
            if extra.is_dir():
                for crt in extra.rglob("*.crt"):
                    shutil.copy(crt, ca / crt.name)
            digest = hashlib.sha256()
            for f in sorted(p for p in context.rglob("*") if p.is_file()):
                digest.update(str(f.relative_to(context)).encode() + f.read_bytes())
            label = digest.hexdigest()[:16]
            have = self.docker("image", "inspect", "-f",
                               '{{index .Config.Labels "crowdsec-milter.standin"}}', name,
                               check=False).stdout.strip()
            if have == label:
                return
            self.docker("build", "-q", "--label", f"crowdsec-milter.standin={label}",
                        "-t", name, str(context), timeout=900)
        finally:
            shutil.rmtree(context, ignore_errors=True)


def _mirror() -> str:
    """This machine's Debian mirror, from its apt sources."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if f.is_file():
            texts.append(f.read_text())
    for m in re.finditer(r"(https?://\S+/debian)/?(?:\s|$)", "\n".join(texts)):
        return m.group(1)
    return "http://deb.debian.org/debian"


def _debootstrap(tarball: Path) -> None:
    tarball.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="bookworm-", dir=tarball.parent))
    try:
        _run("debootstrap", "--variant=minbase", "bookworm", str(build), _mirror(),
             timeout=900)
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (build / sub).glob("*"):
                if f.is_file():
                    f.unlink()
        part = tarball.with_suffix(".part")
        _run("tar", "-C", str(build), "-czf", str(part), ".")
        part.rename(tarball)
    finally:
        shutil.rmtree(build, ignore_errors=True)
