"""The README's commands leave the machine's own services alone.

A postmaster may run the demo or the tests on a machine whose Postfix and CrowdSec are in
service. Set-up and demo must never stop, restart or reconfigure them: they use private
instances of their own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from real_crowdsec import CrowdSec

REPO = Path(__file__).resolve().parent.parent
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def default_postfix_master() -> int | None:
    """PID of the machine's own Postfix master (the /etc/postfix instance), if it runs."""
    if subprocess.run(["postfix", "status"], capture_output=True).returncode != 0:
        return None
    queue = subprocess.run(["postconf", "-h", "queue_directory"], capture_output=True,
                           text=True, check=True).stdout.strip()
    return int((Path(queue) / "pid" / "master.pid").read_text().split()[0])


def snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@pytest.fixture
def machine_postfix():
    """The machine's own Postfix, running: as found, or started here and stopped after."""
    started = default_postfix_master() is None
    if started:
        subprocess.run(["postfix", "start"], check=True, capture_output=True)
    master = default_postfix_master()
    assert master is not None, "the machine's Postfix did not start"
    yield master
    if started:
        subprocess.run(["postfix", "stop"], capture_output=True)


def test_setup_and_demo_leave_running_services_alone(tmp_path: Path, machine_postfix: int):
    policy_before = snapshot(POLICY_RC)
    with CrowdSec(tmp_path / "machines-own") as theirs:
        theirs.start()
        for command in (["bash", "integration/setup.sh"], ["bash", "integration/demo.sh"]):
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            assert theirs.proc is not None and theirs.proc.poll() is None, (
                f"{command[1]} stopped a running CrowdSec")
            theirs.wait_health(timeout=5)
            assert default_postfix_master() == machine_postfix, (
                f"{command[1]} stopped or restarted the machine's Postfix")
    assert snapshot(POLICY_RC) == policy_before, "set-up left policy-rc.d changed"
