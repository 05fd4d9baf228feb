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


def test_selection_and_graded_actions_in_all_three_forms(
        tmp_path: Path, keyfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f"api-key-file = {keyfile}\nscenarios-not-containing = [web-scan, http]\n"
                    "action = [origin:CAPI=tempfail, scenario:*HTTP*=tag]\n")
    monkeypatch.setenv("CROWDSEC_MILTER_ORIGINS", "[cscli, CAPI]")
    s = parse(["-c", str(conf), "--origins", "crowdsec,lists", "--scenarios-containing", "ssh",
               "--tag-header", "X-Spam-CrowdSec"])
    assert s.origins == ("crowdsec", "lists")  # the flag beats the variable
    assert s.scenarios_not_containing == ("web-scan", "http")
    assert s.scenarios_containing == ("ssh",)
    assert s.action_map == {"origin:capi": Action.TEMPFAIL, "scenario:*http*": Action.TAG}
    assert s.tag_header == "X-Spam-CrowdSec"
    assert s.selection.why_not("CAPI", "x") == "--origins"
    monkeypatch.delenv("CROWDSEC_MILTER_ORIGINS")
    assert parse(["--api-key-file", str(keyfile)]).selection.active is False


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
        (["--action", "origin:=tag"], "--action"),
        (["--action", "colour:red=tag"], "--action"),
        (["--origins", "cscli,,CAPI"], "--origins"),
        (["--tag-header", "X-Bad: name"], "--tag-header"),
        (["--reject-reply", "450 4.7.1 nope"], "--reject-reply"),
        (["--tempfail-reply", "451 4.7.1 %(secret)s"], "--tempfail-reply"),
        (["--drop-reply", "450 4.7.1 bye"], "--drop-reply"),
        # longer than libmilter's 980 bytes even with the fields empty (issue 21, defect 4)
        (["--reject-reply", "550 5.7.1 " + "x" * 1010], "--reject-reply"),
        (["--tempfail-reply", "451 4.7.1 " + "é" * 491], "--tempfail-reply"),
        (["--account-reply", "locked " + "x" * 980], "--account-reply"),
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


@pytest.mark.parametrize("case", ["bad-bytes", "directory", "bad-line", "bad-value"])
def test_bad_config_file_is_one_line_naming_it(case: str, tmp_path: Path, keyfile: Path) -> None:
    conf = tmp_path / "milter.conf"
    if case == "bad-bytes":
        conf.write_bytes(b"stage = connect\ndry-run = true\n# caf\xe9\n")
    elif case == "directory":
        conf.mkdir()
    elif case == "bad-line":
        conf.write_text("stage = connect\n= oops\n")
    else:
        conf.write_text("cache-ttl = soon\n")
    result = run("-c", str(conf), "--api-key-file", str(keyfile))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("crowdsec-milter: error:")
    assert ("--cache-ttl" if case == "bad-value" else str(conf)) in lines[0], lines[0]


def test_api_key_file_with_two_lines_is_refused_and_never_shown(
        tmp_path: Path, fake_lapi) -> None:
    _, url = fake_lapi
    path = tmp_path / "key"
    path.write_text("first-half-of-key\nsecond-half-of-key\n")
    path.chmod(0o600)
    for command in ((), ("check",), ("lookup", "192.0.2.1")):
        result = run(*command, "--lapi-url", url, "--api-key-file", str(path))
        out = result.stdout + result.stderr
        assert result.returncode == 2, (command, out)
        assert str(path) in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "first-half" not in out and "second-half" not in out, out


@pytest.mark.parametrize(("content", "needle"), [
    ("key\x00with-nul", "--api-key-file"),
    ("caf\u00e9-key", "--api-key-file"),
    ("  \n\n", "empty"),
])
def test_api_key_file_with_characters_illegal_in_a_header(
        content: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    path.chmod(0o600)
    result = run("--api-key-file", str(path), "--lapi-url", "http://127.0.0.1:9/")
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and str(path) in result.stderr
    assert content.strip() == "" or content not in result.stderr + result.stdout


@pytest.mark.parametrize("key", ["two\nlines", "tab\x7fdel", "   "])
def test_api_key_flag_with_characters_illegal_in_a_header(key: str) -> None:
    result = run("--api-key", key, "--lapi-url", "http://127.0.0.1:9/")
    assert result.returncode == 2, result.stderr
    assert "--api-key" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert key.strip() == "" or key not in result.stderr + result.stdout


@pytest.mark.parametrize(("command", "usage", "words"), [
    ((), "usage: crowdsec-milter [", ("check", "lookup", "--on-lapi-error")),
    (("check",), "usage: crowdsec-milter check [options]\n", ("accepts the key", "--lapi-url")),
    (("lookup",), "usage: crowdsec-milter lookup IP [options]\n",
     ("decisions LAPI holds on IP", "3 blocked", "--stage")),
])
def test_each_command_has_its_own_help(command: tuple[str, ...], usage: str,
                                       words: tuple[str, ...]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage), result.stdout[:200]
    text = " ".join(result.stdout.split())  # as read, whatever the line wrapping
    for word in words:
        assert word in text, word
    result = run(*command, "-h")
    assert result.returncode == 0 and result.stdout.startswith(usage)
