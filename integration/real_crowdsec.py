"""A real CrowdSec (Debian's package) run privately for tests: its own config folder,
database and loopback port, never the Central API (no online_client section).

`CrowdSec(workdir).start()` runs the LAPI alone; `start(acquis=...)` also runs the agent
with our shipped parser and scenarios reading an event log; `agent_only(lapi)` runs a second
agent that feeds another instance's LAPI (two MTA nodes, one LAPI).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ports import free_port

REPO = Path(__file__).resolve().parent.parent
CONTENT = REPO / "conf" / "crowdsec"
HUB = Path("/usr/share/crowdsec/hub")


class CrowdSec:
    """One private CrowdSec instance."""

    def __init__(self, workdir: Path, port: int | None = None, *,
                 ban_duration: str = "4h", name: str = "cs") -> None:
        self.dir = workdir
        self.port = port or free_port()
        self.name = name
        self.ban_duration = ban_duration
        self.etc = workdir / "etc"
        self.cfg = self.etc / "config.yaml"
        self.log = workdir / "log" / "crowdsec.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out = None
        self.lapi_url = f"http://127.0.0.1:{self.port}/"
        self.tls: dict[str, str] | None = None

    # -- configuration ---------------------------------------------------------------------

    def _write_config(self, listen_port: int, lapi_url: str, with_api: bool) -> None:
        for sub in ("etc", "data", "hub", "log", "etc/notifications", "etc/acquis.d"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if not (self.etc / "patterns").exists():
            shutil.copytree("/etc/crowdsec/patterns", self.etc / "patterns")
        index = self.dir / "hub" / ".index.json"
        if not index.exists():  # the agent insists on a hub index: Debian ships one offline
            index.symlink_to(HUB / ".index.json")
        tls = ""
        if self.tls:
            tls = (f"    tls:\n      cert_file: {self.tls['cert']}\n"
                   f"      key_file: {self.tls['key']}\n"
                   f"      ca_cert_path: {self.tls['ca']}\n"
                   f"      client_verification: VerifyClientCertIfGiven\n"
                   f"      bouncers_allowed_ou: [bouncer-ou]\n"
                   f"      agents_allowed_ou: [agent-ou]\n")
        self.cfg.write_text(f"""common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: {self.dir}/log/
  working_dir: .
config_paths:
  config_dir: {self.etc}/
  data_dir: {self.dir}/data/
  simulation_path: {self.etc}/simulation.yaml
  hub_dir: {self.dir}/hub/
  index_path: {self.dir}/hub/.index.json
  notification_dir: {self.etc}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
crowdsec_service:
  acquisition_path: {self.etc}/acquis.yaml
  acquisition_dir: {self.etc}/acquis.d
  parser_routines: 1
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  db_path: {self.dir}/data/crowdsec.db
  flush:
    max_items: 5000
    max_age: 7d
api:
  client:
    insecure_skip_verify: {"true" if self.tls else "false"}
    credentials_path: {self.etc}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{listen_port}
    profiles_path: {self.etc}/profiles.yaml
    trusted_ips: [127.0.0.1, "::1"]
{tls}prometheus:
  enabled: false
""")
        (self.etc / "simulation.yaml").write_text("simulation: off\n")
        (self.etc / "profiles.yaml").write_text(f"""name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: {self.ban_duration}
on_success: break
---
""" + (CONTENT / "profiles" / "crowdsec-milter.yaml").read_text())
        (self.etc / "acquis.yaml").write_text("")

    def install_content(self, acquis_file: Path) -> None:
        """Our parser and scenarios, plus the two hub parsers every pipeline needs."""
        layout = {
            "parsers/s00-raw": [HUB / "parsers/s00-raw/crowdsecurity/syslog-logs.yaml"],
            "parsers/s01-parse": sorted((CONTENT / "parsers/s01-parse").glob("*.yaml")),
            "parsers/s02-enrich": [HUB / "parsers/s02-enrich/crowdsecurity/dateparse-enrich.yaml"],
            "scenarios": sorted((CONTENT / "scenarios").glob("*.yaml")),
        }
        for sub, files in layout.items():
            target = self.etc / sub
            target.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, target / f.name)
        (self.etc / "acquis.yaml").write_text(
            f"filenames:\n  - {acquis_file}\nlabels:\n  type: crowdsec-milter\n")

    # -- lifecycle -------------------------------------------------------------------------

    def enable_tls(self, cert: Path, key: Path, ca: Path) -> None:
        """Serve the LAPI over https; client certificates with OU bouncer-ou are bouncers."""
        self.tls = {"cert": str(cert), "key": str(key), "ca": str(ca)}
        self.lapi_url = f"https://127.0.0.1:{self.port}/"

    def start(self, acquis: Path | None = None) -> CrowdSec:
        """LAPI (and the agent when `acquis` names an event log to read)."""
        self._write_config(self.port, self.lapi_url, True)
        if acquis is not None:
            self.install_content(acquis)
        self.cscli("machines", "add", f"{self.name}-agent", "--auto", "--force",
                   "-f", str(self.etc / "local_api_credentials.yaml"))
        self._fix_creds_url()
        args = ["crowdsec", "-c", str(self.cfg)]
        if acquis is None:
            args.append("-no-cs")
        self._spawn(args)
        self.wait_health()
        if acquis is not None:
            self._wait_agent()
        return self

    def _wait_agent(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.log.exists() and "Starting processing data" in self.log.read_text():
                return
            self._check_alive()
            time.sleep(0.1)
        raise RuntimeError("agent did not start:\n" + self.log_tail())

    def agent_only(self, lapi: CrowdSec, acquis: Path) -> CrowdSec:
        """An agent with no LAPI of its own, registered on and feeding `lapi`."""
        self.lapi_url = lapi.lapi_url
        self._write_config(free_port(), lapi.lapi_url, False)
        self.install_content(acquis)
        lapi.cscli("machines", "add", f"{self.name}-agent", "--auto", "--force",
                   "-f", str(self.etc / "local_api_credentials.yaml"))
        self._fix_creds_url()
        self._spawn(["crowdsec", "-c", str(self.cfg), "-no-api"])
        self._wait_agent()
        return self

    def replay(self, lines_file: Path, timeout: float = 60.0) -> str:
        """Run the agent once over a recorded event log (replay mode) against this running
        LAPI, with the shipped content; returns the agent's output."""
        self.install_content(lines_file)
        out = subprocess.run(
            ["crowdsec", "-c", str(self.cfg), "-dsn", f"file://{lines_file}",
             "-type", "crowdsec-milter", "-no-api"],
            capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        text = out.stdout + out.stderr + (self.log.read_text(errors="replace")
                                          if self.log.exists() else "")
        if out.returncode != 0:
            raise RuntimeError(f"replay failed ({out.returncode}):\n{text[-3000:]}")
        return text

    def explain(self, lines_file: Path) -> str:
        """`cscli explain -v` over a recorded event log with the shipped content, against
        this running LAPI: what each parser made of each line."""
        self.install_content(lines_file)
        return self.cscli("explain", "--file", str(lines_file), "--type", "crowdsec-milter",
                          "-v")

    def _fix_creds_url(self) -> None:
        creds = self.etc / "local_api_credentials.yaml"
        lines = [line for line in creds.read_text().splitlines() if not line.startswith("url:")]
        creds.write_text(f"url: {self.lapi_url}\n" + "\n".join(lines) + "\n")

    def _spawn(self, args: list[str]) -> None:
        self._out = open(self.dir / "log" / "stdout.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._out, cwd=self.dir)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"crowdsec exited {self.proc.returncode}:\n{self.log_tail()}")

    def wait_health(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if self.tls is None:
                    with urllib.request.urlopen(self.lapi_url + "health", timeout=1) as r:
                        if r.status == 200:
                            return
                else:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError("LAPI did not come up:\n" + self.log_tail())

    def log_tail(self, n: int = 40) -> str:
        text = ""
        for f in (self.log, self.dir / "log" / "stdout.log"):
            if f.exists():
                text += "\n".join(f.read_text(errors="replace").splitlines()[-n:]) + "\n"
        return text

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart(self) -> None:
        """Start the same LAPI again (same database, same port)."""
        self.stop()
        args = ["crowdsec", "-c", str(self.cfg), "-no-cs"]
        self._spawn(args)
        self.wait_health()

    def __enter__(self) -> CrowdSec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- cscli -----------------------------------------------------------------------------

    def cscli(self, *args: str) -> str:
        out = subprocess.run(["cscli", "-c", str(self.cfg), *args], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"cscli {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def add_bouncer(self, name: str) -> str:
        return self.cscli("bouncers", "add", name, "-o", "raw").strip()

    def add_decision(self, *, ip: str | None = None, range_: str | None = None,
                     type_: str = "ban", duration: str = "10m",
                     reason: str = "integration test") -> None:
        target = ["--ip", ip] if ip else ["--range", str(range_)]
        self.cscli("decisions", "add", *target, "--type", type_, "--duration", duration,
                   "--reason", reason)

    def delete_decisions(self, *, ip: str | None = None, range_: str | None = None) -> None:
        target = ["--ip", ip] if ip else ["--range", str(range_)]
        self.cscli("decisions", "delete", *target)

    def decisions(self) -> list[dict[str, Any]]:
        raw = self.cscli("decisions", "list", "-o", "json").strip()
        alerts = json.loads(raw) if raw and raw != "null" else []
        return [d for a in alerts or [] for d in a.get("decisions") or []]

    def alerts(self) -> list[dict[str, Any]]:
        raw = self.cscli("alerts", "list", "-o", "json").strip()
        return json.loads(raw) if raw and raw != "null" else []


def replayed_alerts(workdir: Path, lines: list[str]) -> list[dict[str, Any]]:
    """The alerts a fresh CrowdSec (in `workdir`) raises from recorded event lines, replayed
    with the shipped content: [] when none came within 5 s of the replay's end."""
    log = workdir / "events.log"
    workdir.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(lines))
    cs = CrowdSec(workdir / "cs").start()
    try:
        cs.replay(log)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alerts = cs.alerts()
            if alerts:
                return alerts
            time.sleep(0.3)
        return []
    finally:
        cs.stop()
