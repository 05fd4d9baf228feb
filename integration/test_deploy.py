"""The deployment files, proved without a Docker engine.

- docker-compose (Debian's: v1 on Debian 12, v2 on 13) validates and normalises
  docker-compose.yml; every path, variable, flag, port and volume it uses is checked against
  the repo, the Dockerfiles and the program's own options.
- Each script runs natively: the CrowdSec init script against a fake cscli (every state it
  must recover from) and against the real cscli; the milter entrypoint; the Postfix entrypoint
  into a temporary config folder checked by `postfix check`; the health check.
- The stack without Docker: the compose file's own settings, with only host names, ports and
  volume paths mapped to this machine, run a real CrowdSec (our acquisition content), the
  milter through its entrypoint, and a Postfix configured by its entrypoint; a dictionary
  attack through that Postfix gets the attacker banned and rejected, the image's health check
  passes, and the logrotate file rotates the event log the milter keeps writing.
- systemd verifies the unit (and rates its sandbox); the example config file parses.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from crowdsec_milter.cli import build_parser, parse
from eventschema import read_events
from ports import free_port
from real_crowdsec import CrowdSec
from real_postfix import session
from waiting import eventually

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
POSTFIX_DOCKERFILE = REPO / "docker/postfix/Dockerfile"
INIT = REPO / "docker/crowdsec-init.sh"
MILTER_ENTRY = REPO / "docker/milter-entrypoint.sh"
POSTFIX_ENTRY = REPO / "docker/postfix/entrypoint.sh"
HEALTHCHECK = REPO / "docker/healthcheck.py"
UNIT = REPO / "conf/systemd/crowdsec-milter.service"
EXAMPLE = REPO / "conf/crowdsec-milter.conf.example"
LOGROTATE = REPO / "conf/logrotate/crowdsec-milter"
DOCS = REPO / "docs/deploy.md"
VENV_BIN = Path(sys.executable).parent


# -- helpers ---------------------------------------------------------------------------------

def options() -> set[str]:
    return {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")}


def yaml_load(text: str) -> Any:
    """YAML through Debian's python3-yaml (setup.sh installs it; Compose v1 runs on it)."""
    out = subprocess.run(["/usr/bin/python3", "-c", "import json, sys, yaml; "
                          "json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
                         input=text, capture_output=True, text=True, check=True, timeout=30)
    return json.loads(out.stdout)


def compose_major() -> int:
    """1 for Debian 12's docker-compose (Python), 2 for Debian 13's (Compose v2, Go)."""
    out = subprocess.run(["docker-compose", "version", "--short"], capture_output=True,
                         text=True, check=True, timeout=60)
    return int(out.stdout.strip().split(".")[0])


@functools.cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as docker-compose normalises it (paths absolute, lists expanded):
    v2 prints it as JSON, v1 only as YAML."""
    json_out = ["--format", "json"] if compose_major() >= 2 else []
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", *json_out],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if json_out else yaml_load(out.stdout)


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def mounts(name: str) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes: a repo path or a named volume."""
    result = []
    for v in service(name).get("volumes", []):
        if isinstance(v, dict):
            result.append((v["source"], v["target"]))
        else:
            source, target = v.split(":")[:2]
            result.append((source, target))
    return result


def read_only(name: str, volume: str) -> bool:
    """Whether a service mounts a volume read-only (v1 keeps the short form, v2 the long)."""
    for v in service(name).get("volumes", []):
        if isinstance(v, dict) and v["source"] == volume:
            return bool(v.get("read_only"))
        if isinstance(v, str) and v.split(":")[0] == volume:
            return v.split(":")[2:3] == ["ro"]
    raise AssertionError((name, volume))


def mount_of(name: str, volume: str) -> str:
    targets = [t for s, t in mounts(name) if s == volume]
    assert len(targets) == 1, (name, volume)
    return targets[0]


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        result[-1].append(line)
    return result


def copies(dockerfile: Path, stage: int | None = None) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY that takes files from the build context, in all
    stages or in one."""
    result = []
    chosen = stages(dockerfile) if stage is None else [stages(dockerfile)[stage]]
    for instructions in chosen:
        for line in instructions:
            words = line.split()
            if words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
                args = [w for w in words[1:] if not w.startswith("--")]
                result.append((args[:-1], args[-1]))
    return result


def copied_to(dockerfile: Path) -> set[str]:
    """Paths in the final image of the files COPY put there from the build context."""
    return {str(Path(dest) / Path(src).name) if dest.endswith("/") else dest
            for sources, dest in copies(dockerfile, -1) for src in sources}


def exec_path(dockerfile: Path, instruction: str) -> list[str]:
    """The JSON-form command of ENTRYPOINT or HEALTHCHECK ... CMD in the final stage."""
    for line in stages(dockerfile)[-1]:
        if line.upper().startswith(instruction):
            return json.loads(line[line.index("["):])
    raise AssertionError(f"no {instruction} in {dockerfile}")



def run_sh(script: Path, *args: str, env: dict[str, str],
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# -- the compose file and the Dockerfiles ---------------------------------------------------

def test_compose_file_is_valid() -> None:
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert set(compose()["services"]) == {"crowdsec", "milter", "postfix"}
    image = service("crowdsec")["image"]
    assert re.fullmatch(r"crowdsecurity/crowdsec:v1\.[67]\.\d+", image), image


def test_every_path_the_deployment_uses_exists() -> None:
    named = set(compose()["volumes"])
    for name in compose()["services"]:
        for source, _ in mounts(name):
            if source.startswith("/"):
                assert Path(source).exists(), (name, source)
                assert Path(source).resolve().is_relative_to(REPO), (name, source)
            else:
                assert source in named, (name, source)
    contexts = {n: Path(s["build"]["context"]) for n, s in compose()["services"].items()
                if "build" in s}
    assert contexts == {"milter": REPO, "postfix": REPO / "docker/postfix"}
    for context in contexts.values():
        dockerfile = context / "Dockerfile"
        assert dockerfile.exists()
        for sources, _ in copies(dockerfile):
            for src in sources:
                assert (context / src).exists(), (dockerfile, src)
    # what the images start is what they copied in
    for dockerfile in (DOCKERFILE, POSTFIX_DOCKERFILE):
        entry = exec_path(dockerfile, "ENTRYPOINT")
        assert entry[0] == "/bin/sh" and entry[1] in copied_to(dockerfile), entry
    assert exec_path(DOCKERFILE, "HEALTHCHECK")[-1] in copied_to(DOCKERFILE)
    # the crowdsec service runs the init script where it mounted it
    command = " ".join(service("crowdsec")["entrypoint"])
    init_target = dict(mounts("crowdsec"))[str(INIT)]
    assert f"/bin/sh {init_target} &" in command and "/docker_start.sh" in command


def test_all_our_crowdsec_content_is_mounted_where_crowdsec_loads_it() -> None:
    content = REPO / "conf/crowdsec"
    ours = {p for sub in ("acquis.d", "parsers", "scenarios", "collections")
            for p in (content / sub).rglob("*.yaml")}
    assert ours, "conf/crowdsec holds no content"
    mounted = {Path(s): t for s, t in mounts("crowdsec") if s.startswith(str(content))}
    assert set(mounted) == ours
    for source, target in mounted.items():
        assert target == "/etc/crowdsec/" + str(source.relative_to(content))
    # CrowdSec reads the very file the milter writes, through the shared volume
    acquis = yaml_load((content / "acquis.d/crowdsec-milter.yaml").read_text())
    event_log = service("milter")["environment"]["CROWDSEC_MILTER_EVENT_LOG"]
    in_milter = mount_of("milter", "milter-events")
    in_crowdsec = mount_of("crowdsec", "milter-events")
    assert event_log.startswith(in_milter + "/")
    assert acquis["filenames"] == [in_crowdsec + event_log[len(in_milter):]]


def test_variables_flags_and_ports_line_up() -> None:
    opts = options()
    files = [COMPOSE, DOCKERFILE, HEALTHCHECK, MILTER_ENTRY, UNIT, EXAMPLE, LOGROTATE, DOCS]
    used = set()
    for f in files:
        used |= set(re.findall(r"CROWDSEC_MILTER_([A-Z0-9_]+)", f.read_text()))
    used -= {"BIN"}  # the entrypoint's own override of the program path, for tests
    assert {"SOCKET", "API_KEY_FILE", "EVENT_LOG", "LAPI_URL", "METRICS_LISTEN"} <= used
    for name in used:
        assert "--" + name.lower().replace("_", "-") in opts, name
    # flags given to the program anywhere in the deployment files and docs
    command = re.compile(r"(?:^|[;&|]\s*|\bexec\s+|\bmilter\s+|\$\s+|ExecStart=)"
                         r"(?:\S*/)?crowdsec-milter"
                         r"((?:[ \t]+[^\s;&|#]+)*)", re.M)
    flags = {f for path in files for m in command.finditer(path.read_text())
             for f in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", m.group(1))}
    assert flags <= opts, flags - opts
    for line in EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "--" + line.split("=")[0].strip() in opts, line

    milter_env = service("milter")["environment"]
    sock = re.fullmatch(r"inet:(\d+)@0\.0\.0\.0", milter_env["CROWDSEC_MILTER_SOCKET"])
    assert sock, milter_env["CROWDSEC_MILTER_SOCKET"]
    port = sock.group(1)
    assert service("postfix")["environment"]["MILTER_ADDRESS"] == f"inet:milter:{port}"
    exposed = {w for line in stages(DOCKERFILE)[-1] if line.startswith("EXPOSE")
               for w in line.split()[1:]}
    metrics_port = milter_env["CROWDSEC_MILTER_METRICS_LISTEN"].rpartition(":")[2]
    assert {port, metrics_port} <= exposed
    image_env = " ".join(line for line in stages(DOCKERFILE)[-1] if line.startswith("ENV"))
    assert f"CROWDSEC_MILTER_SOCKET=inet:{port}@0.0.0.0" in image_env
    assert milter_env["CROWDSEC_MILTER_LAPI_URL"] == "http://crowdsec:8080/"
    assert {"published": 2525, "target": 25} in [
        {k: int(v) for k, v in p.items() if k in ("published", "target")}
        for p in service("postfix")["ports"]]
    assert "EXPOSE 25" in POSTFIX_DOCKERFILE.read_text()
    # the key: written by crowdsec-init in one volume, read by the milter from it, owned by
    # the uid the milter image runs as
    cs_env = service("crowdsec")["environment"]
    key_in_cs, key_in_milter = cs_env["MILTER_KEY_FILE"], milter_env["CROWDSEC_MILTER_API_KEY_FILE"]
    assert Path(key_in_cs).parent == Path(mount_of("crowdsec", "milter-key"))
    assert Path(key_in_milter).parent == Path(mount_of("milter", "milter-key"))
    assert Path(key_in_cs).name == Path(key_in_milter).name
    assert read_only("milter", "milter-key")
    uid = re.search(r"useradd [^&]*--uid (\d+)[^&]* milter", " ".join(stages(DOCKERFILE)[-1]))
    assert uid and cs_env["KEY_OWNER"] == uid.group(1)


def test_final_image_stage_is_small_and_unprivileged() -> None:
    build, final = stages(DOCKERFILE)
    assert build[0].split()[1] == "python:3.11-slim-bookworm"
    assert final[0] == "FROM python:3.11-slim-bookworm"
    assert "libmilter-dev" in " ".join(build) and "gcc" in " ".join(build)
    text = " ".join(final)
    assert "libmilter1.0.1" in text
    assert not re.search(r"\b(gcc|libmilter-dev|build-essential)\b", text)
    assert "USER milter" in final
    assert any(line.startswith("HEALTHCHECK") for line in final)


def test_build_context_builds_the_package(tmp_path: Path) -> None:
    """What the build stage copies is enough for setuptools to build the package."""
    src = tmp_path / "src"
    src.mkdir()
    build_stage = stages(DOCKERFILE)[0]
    for sources, dest in copies(DOCKERFILE, 0):
        for s in sources:
            into_folder = dest.endswith("/") or dest == "."
            target = src / Path(s).name if into_folder else src / dest
            if (REPO / s).is_dir():
                shutil.copytree(REPO / s, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / s, target)
    assert "RUN pip wheel --no-cache-dir --wheel-dir /wheels ." in build_stage
    out = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                          "egg_info", "--egg-base", str(tmp_path), "build", "--build-base",
                          str(tmp_path / "build")], cwd=src, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    built = {p.name for p in (tmp_path / "build/lib/crowdsec_milter").glob("*.py")}
    assert built == {p.name for p in (REPO / "milter/crowdsec_milter").glob("*.py")}
    entry = (tmp_path / "crowdsec_milter.egg-info/entry_points.txt").read_text()
    assert "crowdsec-milter = crowdsec_milter.cli:main" in entry


# -- the scripts, run natively --------------------------------------------------------------

FAKE_CSCLI = r"""#!/bin/sh
# cscli as crowdsec-init.sh uses it; the database is a folder, one file per bouncer.
db="$(dirname "$0")/db"
mkdir -p "$db"
printf '%s\n' "$*" >>"$db/../calls"
if [ -s "$db/../busy" ]; then            # the first N calls fail like a locked database
  n=$(cat "$db/../busy"); echo $((n - 1)) >"$db/../busy"
  [ "$n" -gt 0 ] && { echo "database is locked" >&2; exit 1; }
fi
case "$1 $2" in
  "bouncers list")
    printf '['; sep=''
    for f in "$db"/*; do
      [ -e "$f" ] || continue
      printf '%s\n  {\n    "name": "%s",\n    "revoked": false\n  }' "$sep" "$(basename "$f")"
      sep=','
    done
    printf '\n]\n' ;;
  "bouncers add")
    [ -e "$db/$3" ] && { echo "bouncer $3 already exists" >&2; exit 1; }
    [ "$4" = "-k" ] || exit 1
    printf '%s' "$5" >"$db/$3" ;;
  "bouncers delete")
    [ -e "$db/$3" ] || { echo "bouncer $3 doesn't exist" >&2; exit 1; }
    rm "$db/$3" ;;
  *) exit 1 ;;
esac
"""


def test_crowdsec_init_keeps_key_and_bouncer_in_step(tmp_path: Path) -> None:
    cscli = tmp_path / "cscli"
    cscli.write_text(FAKE_CSCLI)
    cscli.chmod(0o755)
    db, keyfile = tmp_path / "db", tmp_path / "secrets" / "key"
    env = {**os.environ, "CSCLI": str(cscli), "MILTER_KEY_FILE": str(keyfile),
           "KEY_OWNER": "10001", "INIT_WAIT_SECONDS": "20"}

    def init() -> str:
        out = run_sh(INIT, env=env)
        assert out.returncode == 0, out.stderr
        return out.stderr

    def calls() -> list[str]:
        return (tmp_path / "calls").read_text().splitlines()

    # first start, while CrowdSec's entrypoint still holds the database
    (tmp_path / "busy").write_text("1")
    init()
    key = keyfile.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{48}", key)
    assert (db / "crowdsec-milter").read_text() == key
    st = keyfile.stat()
    assert st.st_uid == 10001 and stat.S_IMODE(st.st_mode) == 0o600
    # a restart changes nothing
    n = len(calls())
    assert "is registered" in init()
    assert calls()[n:] == ["bouncers list -o json"]
    # the database volume was recreated: the same key is registered again
    (db / "crowdsec-milter").unlink()
    init()
    assert keyfile.read_text().strip() == key == (db / "crowdsec-milter").read_text()
    # the key volume was recreated: a new key replaces the stale bouncer
    keyfile.unlink()
    init()
    new = keyfile.read_text().strip()
    assert new != key and (db / "crowdsec-milter").read_text() == new
    assert "bouncers delete crowdsec-milter" in calls()
    # without KEY_OWNER the key must be readable by the milter's other uid
    keyfile.unlink()
    del env["KEY_OWNER"]
    init()
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o644
    # cscli that never works: a clear failure, not a hang
    (tmp_path / "busy").write_text("1000")
    keyfile.unlink()
    out = run_sh(INIT, env={**env, "INIT_WAIT_SECONDS": "1"})
    assert out.returncode == 1 and "gave up" in out.stderr
    assert not keyfile.exists()


def fake_program(folder: Path, name: str) -> Path:
    """A stand-in that records its arguments, one per line."""
    path = folder / name
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{folder}/{name}.args"\n')
    path.chmod(0o755)
    return path


def test_milter_entrypoint_waits_for_the_key_then_execs(tmp_path: Path) -> None:
    fake_program(tmp_path, "crowdsec-milter")
    key = tmp_path / "key"
    env = {**os.environ, "CROWDSEC_MILTER_API_KEY_FILE": str(key), "KEY_WAIT_SECONDS": "10",
           "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["sh", str(MILTER_ENTRY), "--dry-run", "--log-level", "debug"],
                            env=env)
    time.sleep(1.2)
    assert proc.poll() is None  # still waiting for the key
    key.write_text("k\n")
    assert proc.wait(timeout=10) == 0
    assert (tmp_path / "crowdsec-milter.args").read_text() == "--dry-run\n--log-level\ndebug\n"
    env["KEY_WAIT_SECONDS"] = "1"
    env["CROWDSEC_MILTER_API_KEY_FILE"] = str(tmp_path / "never")
    out = run_sh(MILTER_ENTRY, env=env, timeout=10)
    assert out.returncode == 2 and "no bouncer key" in out.stderr


def test_postfix_entrypoint_configures_a_valid_postfix(tmp_path: Path) -> None:
    conf = tmp_path / "postfix"
    env = {**os.environ, "POSTFIX_CONFIG_DIR": str(conf),
           **service("postfix")["environment"]}
    out = run_sh(POSTFIX_ENTRY, "--configure-only", env=env, timeout=60)
    assert out.returncode == 0, out.stderr

    def postconf(*args: str) -> str:
        return subprocess.run(["postconf", "-c", str(conf), *args], capture_output=True,
                              text=True, check=True).stdout

    main_cf = postconf("-n")
    assert "smtpd_milters = { inet:milter:8895, default_action=accept }" in main_cf
    assert "milter_rcpt_macros = i {rcpt_addr} {rcpt_host} {rcpt_mailer}" in main_cf
    assert "maillog_file = /dev/stdout" in main_cf
    assert "local_recipient_maps = inline:{ postmaster=ok, abuse=ok, alice=ok, bob=ok }" in main_cf
    # nothing chrooted: smtpd must resolve the milter's host name with the container's DNS
    chroot = postconf("-F", "*/*/chroot").splitlines()
    assert chroot and all(line.endswith("= n") for line in chroot)
    # XCLIENT (claiming another client's address) is nobody's unless XCLIENT_HOSTS says so
    assert postconf("-h", "smtpd_authorized_xclient_hosts").strip() == ""
    # a second run (container restart) is fine too, and takes a changed setting
    env["XCLIENT_HOSTS"] = "10.9.0.0/24 [fd00:9::]/64"
    assert run_sh(POSTFIX_ENTRY, "--configure-only", env=env, timeout=60).returncode == 0
    xclient = postconf("-h", "smtpd_authorized_xclient_hosts").strip()
    assert xclient == "10.9.0.0/24 [fd00:9::]/64"


def test_healthcheck_without_metrics_connects_to_the_milter_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "CROWDSEC_MILTER_SOCKET": f"inet:{port}@0.0.0.0",
               "CROWDSEC_MILTER_METRICS_LISTEN": ""}
        ok = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=10)
    assert ok.returncode == 0
    bad = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=10)
    assert bad.returncode == 1


# -- the stack without Docker ---------------------------------------------------------------

def localize(env: dict[str, Any], mapping: dict[str, str]) -> dict[str, str]:
    """A service's environment with container names, ports and paths mapped to here."""
    result = {}
    for key, value in env.items():
        value = str(value)
        for old, new in mapping.items():
            value = value.replace(old, new)
        assert not re.search(r"\b(crowdsec|milter):|0\.0\.0\.0|/run/|/var/log/", value), (
            f"{key}={value}: not mapped to this machine")
        result[key] = value
    return result


def reachable(folder: Path) -> None:
    """Let unprivileged users (postfix, nobody) reach `folder` (pytest's are 0700)."""
    for f in (folder, *folder.parents):
        if not f.stat().st_mode & stat.S_IXOTH:
            f.chmod(f.stat().st_mode | stat.S_IXOTH)


def private_postfix(etc: Path, root: Path, port: int) -> None:
    """What Docker gives the Postfix container, here: its own queue, port and log file."""
    for sub in ("spool", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix", "postfix")
    reachable(root)

    def postconf(*args: str) -> None:
        subprocess.run(["postconf", "-c", str(etc), *args], check=True, capture_output=True)

    postconf("-e", f"queue_directory={root / 'spool'}", f"data_directory={root / 'data'}",
             f"maillog_file={root / 'maillog'}", f"maillog_file_prefixes={root}",
             "inet_interfaces=loopback-only")
    postconf("-M#", "smtp/inet")
    postconf("-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd")


def test_the_stack_without_docker(tmp_path: Path) -> None:
    secrets, logdir, pf = tmp_path / "secrets", tmp_path / "log", tmp_path / "postfix"
    for d in (secrets, logdir, pf):
        d.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(logdir, nobody.pw_uid, nobody.pw_gid)  # as LogsDirectory= does for the unit
    reachable(logdir)  # logrotate works in it as that user (su)
    milter_port, metrics_port, smtp_port = free_port(), free_port(), free_port()
    # CrowdSec starts before the milter has made its log (issue 19, defect 1): the shipped
    # acquisition must pick the file up when it appears.
    event_log = logdir / "events.log"
    cs = CrowdSec(tmp_path / "crowdsec").start(acquis=event_log)
    assert not event_log.exists()
    milter = milter_out = postfix_started = None
    try:
        mapping = {"http://crowdsec:8080/": cs.lapi_url,
                   "/run/secrets/crowdsec-milter": str(secrets),
                   "/var/log/crowdsec-milter": str(logdir),
                   "inet:8895@0.0.0.0": f"inet:{milter_port}@127.0.0.1",
                   "0.0.0.0:9395": f"127.0.0.1:{metrics_port}",
                   "inet:milter:8895": f"inet:127.0.0.1:{milter_port}"}
        base = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSEC_MILTER_")}

        # crowdsec: the init script with the real cscli makes the bouncer and its key
        cscli = tmp_path / "cscli"
        cscli.write_text(f'#!/bin/sh\nexec cscli -c "{cs.cfg}" "$@"\n')
        cscli.chmod(0o755)
        cs_env = localize({k: v for k, v in service("crowdsec")["environment"].items()
                           if k in ("MILTER_KEY_FILE", "KEY_OWNER")}, mapping)
        out = run_sh(INIT, env={**base, **cs_env, "CSCLI": str(cscli)}, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "crowdsec-milter" in cs.cscli("bouncers", "list")

        # milter: the compose service's environment, started through the image's entrypoint
        milter_env = localize(service("milter")["environment"], mapping)
        milter_env["CROWDSEC_MILTER_UPDATE_FREQUENCY"] = "1"  # the test's only own setting
        milter_out = open(tmp_path / "milter.log", "wb")  # noqa: SIM115
        milter = subprocess.Popen(["sh", str(MILTER_ENTRY)], stdout=milter_out,
                                  stderr=subprocess.STDOUT, cwd="/",
                                  env={**base, **milter_env,
                                       "PATH": f"{VENV_BIN}:{base['PATH']}"})

        def milter_log() -> str:
            return (tmp_path / "milter.log").read_text(errors="replace")

        def healthy() -> bool:
            assert milter.poll() is None, milter_log()
            return subprocess.run([sys.executable, str(HEALTHCHECK)], timeout=10,
                                  env={**base, **milter_env}).returncode == 0

        assert eventually(healthy, 20), milter_log()  # the image's health check
        assert "readable by other users" not in milter_log()

        # postfix: configured by its entrypoint, then given a port and a queue of its own
        pf_env = localize(service("postfix")["environment"], mapping)
        # the test plays its clients with XCLIENT, allowed by the image's own setting
        out = run_sh(POSTFIX_ENTRY, "--configure-only",
                     env={**base, **pf_env, "POSTFIX_CONFIG_DIR": str(pf / "etc"),
                          "XCLIENT_HOSTS": "127.0.0.0/8"}, timeout=60)
        assert out.returncode == 0, out.stderr
        private_postfix(pf / "etc", pf, smtp_port)
        out = subprocess.run(["postfix", "-c", str(pf / "etc"), "start"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        postfix_started = True

        def rejected(ip: str) -> bool:
            t = session(smtp_port, ip, rcpts=["bob@example.org"])
            return t.code("MAIL") == 550 and "blocked by CrowdSec" in t.text()

        def accepted(ip: str) -> bool:
            try:
                return session(smtp_port, ip, rcpts=["bob@example.org"]).code("<message>") == 250
            except OSError:  # not listening yet
                return False

        # a dictionary attack: Postfix refuses, the milter reports, CrowdSec bans, the
        # milter rejects
        attacker, bystander = "198.51.100.66", "192.0.2.77"
        assert eventually(lambda: accepted(bystander), 10)
        for batch in range(4):
            t = session(smtp_port, attacker, data=False,
                        rcpts=[f"guess{batch}-{i}@example.org" for i in range(5)])
            assert t.rcpt_codes == [550] * 5, t.text()
        assert eventually(lambda: rejected(attacker), 20), cs.log_tail() + milter_log()
        assert accepted(bystander)
        lines = read_events(event_log)
        assert {x["client_ip"] for x in lines if x["event"] == "rcpt_rejected"} == {attacker}

        # logrotate: the shipped file, pointed at this log, user and process
        conf = LOGROTATE.read_text().replace("/var/log/crowdsec-milter/events.log",
                                             str(event_log))
        conf = conf.replace("crowdsec-milter crowdsec-milter", "nobody nogroup")
        conf, n = re.subn(r"systemctl kill --signal=USR1 crowdsec-milter.service",
                          f"kill -USR1 {milter.pid}", conf)
        assert n == 1
        (tmp_path / "logrotate.conf").write_text(conf)
        out = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"),
                              str(tmp_path / "logrotate.conf")], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        rotated = Path(f"{event_log}.1")
        assert attacker in rotated.read_text()
        assert event_log.stat().st_uid == nobody.pw_uid
        t = session(smtp_port, "203.0.113.9", rcpts=["nobody-here@example.org"], data=False)
        assert t.rcpt_codes == [550]
        assert eventually(lambda: "203.0.113.9" in event_log.read_text(), 10)
        assert "203.0.113.9" not in rotated.read_text()
    finally:
        if postfix_started:
            subprocess.run(["postfix", "-c", str(pf / "etc"), "stop"], capture_output=True,
                           timeout=60)
        if milter is not None:
            milter.send_signal(signal.SIGKILL)
            milter.wait(timeout=10)
        if milter_out is not None:
            milter_out.close()
        cs.stop()


# -- systemd, config file ---------------------------------------------------------------------

def test_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    unit = UNIT.read_text()
    copy = tmp_path / "crowdsec-milter.service"
    copy.write_text(unit.replace("/usr/local/bin/crowdsec-milter", str(VENV_BIN /
                                                                         "crowdsec-milter")))
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    for needed in ("Type=notify", "NotifyAccess=main", "WatchdogSec=",
                   "User=crowdsec-milter", "Group=crowdsec-milter",
                   "ExecStart=/usr/local/bin/crowdsec-milter -c "
                   "/etc/crowdsec-milter/crowdsec-milter.conf",
                   "Restart=on-failure", "LogsDirectory=crowdsec-milter",
                   "RuntimeDirectory=crowdsec-milter", "ConfigurationDirectory=crowdsec-milter",
                   "ProtectSystem=strict", "ProtectHome=true", "PrivateTmp=true",
                   "NoNewPrivileges=true", "PrivateDevices=true",
                   "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                   "SystemCallFilter=@system-service", "CapabilityBoundingSet=\n"):
        assert needed in unit, needed
    assert "USR1" not in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(copy)],
                         capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert level and float(level.group(1)) <= 2.0, out.stdout[-2000:]
    # the event log the milter writes by default is in its LogsDirectory
    assert parse(["--api-key", "k"]).event_log.startswith("/var/log/crowdsec-milter/")


def test_example_config_parses(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k\n")
    key.chmod(0o600)
    s = parse(["-c", str(EXAMPLE), "--api-key-file", str(key)])
    assert s.socket == "inet:8895@127.0.0.1" and s.metrics_listen == ("127.0.0.1", 9395)
    assert s.lapi_url == "http://127.0.0.1:8080/" and s.mode == "stream"
    assert s.action_map == {"ban": "reject", "captcha": "tempfail"}
    assert s.event_log == "/var/log/crowdsec-milter/events.log"
    assert len(s.trusted_networks) == 2
    text = EXAMPLE.read_text()
    assert "api-key-file = /etc/crowdsec-milter/key" in text
    assert "-c /etc/crowdsec-milter/crowdsec-milter.conf" in UNIT.read_text()
