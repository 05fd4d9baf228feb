"""The command line: every option as flag, environment variable and config file key; bad
input stops start-up with one line naming it and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from crowdsec_milter.cli import build_parser, parse
from crowdsec_milter.policy import Action, Stage

EXE = str(Path(sys.executable).parent / "crowdsec-milter")


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text("s3cret-key-value\n")
    path.chmod(0o600)
    return path


def test_defaults_and_key_file(keyfile: Path) -> None:
    s = parse(["--api-key-file", str(keyfile)])
    assert s.api_key == "s3cret-key-value"
    assert s.socket == "inet:8895@127.0.0.1" and s.mode == "stream" and s.stage is Stage.CONNECT
    assert s.action_map == {"ban": Action.REJECT, "captcha": Action.TEMPFAIL}
    assert "s3cret" not in repr(s)


def test_flags_env_and_config_file(tmp_path: Path, keyfile: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f"api-key-file = {keyfile}\nmode = live\ncache-ttl = 30\n"
                    "action = [ban=drop, captcha=reject]\nstage = helo\n")
    monkeypatch.setenv("CROWDSEC_MILTER_LAPI_TIMEOUT", "0.5")
    monkeypatch.setenv("CROWDSEC_MILTER_TRUSTED_NETWORK", "[10.0.0.0/8, 2001:db8::/32]")
    s = parse(["-c", str(conf), "--cache-ttl", "45"])
    assert s.mode == "live" and s.stage is Stage.HELO
    assert s.cache_ttl == 45.0  # the flag beats the file
    assert s.lapi_timeout == 0.5
    assert s.action_map == {"ban": Action.DROP, "captcha": Action.REJECT}
    assert [str(n) for n in s.trusted_networks] == ["10.0.0.0/8", "2001:db8::/32"]


def test_every_option_has_an_env_var_and_a_default_in_help() -> None:
    text = run("--help").stdout
    for action in build_parser()._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or long[0] in ("--help", "--version", "--config"):
            continue
        env = "CROWDSEC_MILTER_" + long[0][2:].upper().replace("-", "_")
        assert env in text.replace("\n", "").replace(" ", ""), env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSEC_MILTER_")}
    full_env.update(env or {})
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=30,
                          env=full_env)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "fast"], "--mode"),
        (["--update-frequency", "abc"], "--update-frequency"),
        (["--update-frequency", "-1"], "--update-frequency"),
        (["--lapi-timeout", "0"], "--lapi-timeout"),
        (["--lapi-url", "ftp://x"], "--lapi-url"),
        (["--lapi-url", "http//nohost"], "--lapi-url"),
        (["--socket", "inet:99999@127.0.0.1"], "--socket"),
        (["--socket", "tcp:127.0.0.1"], "--socket"),
        (["--action", "ban"], "--action"),
        (["--action", "ban=explode"], "--action"),
        (["--reject-reply", "450 4.7.1 nope"], "--reject-reply"),
        (["--tempfail-reply", "451 4.7.1 %(secret)s"], "--tempfail-reply"),
        (["--drop-reply", "450 4.7.1 bye"], "--drop-reply"),
        (["--trusted-network", "10.0.0.0/33"], "--trusted-network"),
        (["--stage", "data"], "--stage"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
        (["--api-key", "k", "--api-key-file", "/etc/hostname"], "--api-key"),
        (["-c", "/nonexistent.conf"], "nonexistent.conf"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, keyfile: Path) -> None:
    if "--api-key-file" not in args and "--api-key" not in args:
        args = [*args, "--api-key-file", str(keyfile)]
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0] and "Traceback" not in result.stderr
    assert lines[0].startswith("crowdsec-milter: error:")


def test_missing_key_and_empty_key_file(tmp_path: Path) -> None:
    result = run()
    assert result.returncode == 2 and "API key is required" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = run("--api-key-file", str(empty))
    assert result.returncode == 2 and "is empty" in result.stderr


def test_bad_env_var_names_the_flag(keyfile: Path) -> None:
    result = run("--api-key-file", str(keyfile), env={"CROWDSEC_MILTER_MODE": "turbo"})
    assert result.returncode == 2 and "--mode" in result.stderr


def test_world_readable_key_file_warns_without_printing_the_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("very-secret-key\n")
    path.chmod(0o644)
    result = run("--api-key-file", str(path), "--update-frequency", "-1")
    assert "readable by other users" in result.stderr
    assert "very-secret-key" not in result.stderr + result.stdout


def test_help_and_version() -> None:
    result = run("--help")
    assert result.returncode == 0 and "--on-lapi-error" in result.stdout
    result = subprocess.run([sys.executable, "-m", "crowdsec_milter", "--version"],
                            capture_output=True, text=True, cwd="/", timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("crowdsec-milter ")
