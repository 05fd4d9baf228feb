"""The CLI's value checks, in-process: each option lands in Settings as given, and each bad
value is refused with a message naming the option (what an operator reads on start-up)."""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
from pathlib import Path

import pytest
from crowdsec_milter.cli import ConfigError, load
from crowdsec_milter.policy import Action, Reply, Stage
from crowdsec_milter.settings import Settings


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options set in the caller's environment must not leak into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("CROWDSEC_MILTER_"):
            monkeypatch.delenv(name)


def test_every_option_reaches_the_settings(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    got = load([
        "--socket", "unix:/run/milter.sock", "--lapi-url", "https://lapi.example:8443/",
        "--lapi-ca", str(tmp_path / "ca.pem"), "--lapi-cert", str(tmp_path / "cert.pem"),
        "--lapi-key", str(tmp_path / "key.pem"), "--mode", "live",
        "--update-frequency", "3", "--resync-interval", "600", "--cache-ttl", "30",
        "--cache-size", "500", "--lapi-timeout", "0.5", "--on-lapi-error", "tempfail",
        "--action", "ban=drop", "--action", " Captcha = Accept ", "--default-action", "tempfail",
        "--stage", "rcpt", "--reject-reply", "554 5.7.1 no %(ip)s",
        "--tempfail-reply", "450 4.7.0 later", "--drop-reply", "421 4.7.0 bye",
        "--unavailable-reply", "452 try later", "--trusted-network", " 10.1.2.3/8 ",
        "--dry-run", "--event-log", "-", "--always-allow-rcpt", " Postmaster@Example.ORG ",
        "--exempt-authenticated", "--trap-rcpt", " Trap@Example.ORG ", "--trap-rcpt", " ",
        "--metrics-listen", "[::1]:9100", "--usage-metrics-interval", "60",
        "--log-level", "debug", "--log-format", "json",
    ])
    assert got == Settings(
        socket="unix:/run/milter.sock", lapi_url="https://lapi.example:8443/", api_key="",
        mode="live", update_frequency=3.0, resync_interval=600.0,
        cache_ttl=30.0, cache_size=500, lapi_timeout=0.5, on_lapi_error=Action.TEMPFAIL,
        actions=(("ban", Action.DROP), ("captcha", Action.ACCEPT)),
        default_action=Action.TEMPFAIL, stage=Stage.RCPT,
        reject_reply=Reply("554", "5.7.1", "no %(ip)s"),
        tempfail_reply=Reply("450", "4.7.0", "later"), drop_reply=Reply("421", "4.7.0", "bye"),
        unavailable_reply=Reply("452", None, "try later"),
        trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),), dry_run=True, event_log="-",
        always_allow_rcpt=("postmaster@example.org",), exempt_authenticated=True,
        trap_rcpt=("trap@example.org",), metrics_listen=("::1", 9100),
        usage_metrics_interval=60.0, lapi_ca=str(tmp_path / "ca.pem"),
        lapi_cert=str(tmp_path / "cert.pem"), lapi_key=str(tmp_path / "key.pem"),
        log_level="debug", log_format="json",
    )


def test_defaults_without_options(keyfile: Path) -> None:
    conf = keyfile.parent / "empty.conf"
    conf.write_text("")
    got = load(["--api-key-file", str(keyfile), "-c", str(conf)])
    assert got == Settings(api_key="s3cret-key-value")


@pytest.mark.parametrize("value", ["0", "1", "0.001", "65535"])
def test_usage_metrics_interval_zero_turns_pushes_off(value: str) -> None:
    got = load(["--api-key", "k", "--usage-metrics-interval", value])
    assert got.usage_metrics_interval == float(value)


@pytest.mark.parametrize("name", ["update-frequency", "resync-interval", "cache-ttl",
                                  "cache-size", "lapi-timeout", "usage-metrics-interval"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_durations_and_sizes_must_be_positive(name: str, value: str) -> None:
    if name == "cache-size" and value in ("nan", "inf"):
        value = "-5"
    if name == "usage-metrics-interval" and value == "0":
        value = "-0.5"  # 0 is allowed there: it turns the pushes off
    with pytest.raises(ConfigError, match=f"^--{name} must be a positive number, not "):
        load(["--api-key", "k", f"--{name}", value])


@pytest.mark.parametrize(("spec", "expected"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:1", ("::1", 1)),
    ("metrics.local:65535", ("metrics.local", 65535)), ("Xhost:9100", ("Xhost", 9100)),
    ("", None),
])
def test_metrics_listen_values(spec: str, expected: tuple[str, int] | None) -> None:
    assert load(["--api-key", "k", "--metrics-listen", spec]).metrics_listen == expected


@pytest.mark.parametrize("spec", ["9100", ":9100", "[]:9100", "host:", "host:0", "host:65536",
                                  "host:x1"])
def test_bad_metrics_listen_is_refused(spec: str) -> None:
    message = rf"^--metrics-listen '{re.escape(spec)}' is not HOST:PORT$"
    with pytest.raises(ConfigError, match=message):
        load(["--api-key", "k", "--metrics-listen", spec])


@pytest.mark.parametrize("spec", ["inet:1@127.0.0.1", "inet:65535", "inet6:8895@::1",
                                  "unix:/run/m.sock", "local:/run/m.sock"])
def test_socket_values(spec: str) -> None:
    assert load(["--api-key", "k", "--socket", spec]).socket == spec


@pytest.mark.parametrize(("spec", "message"), [
    ("inet:0@127.0.0.1", "port out of range"), ("inet:65536@127.0.0.1", "port out of range"),
    ("inet:70000", "port out of range"),
    ("tcp:8895", "is not inet:PORT@HOST, inet6:PORT@HOST or unix:/path"),
])
def test_bad_socket_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^--socket '{spec}'.*{message}"):
        load(["--api-key", "k", "--socket", spec])


def test_lapi_url_must_be_http_or_https_with_a_host() -> None:
    assert load(["--api-key", "k", "--lapi-url", "https://h:1/"]).lapi_url == "https://h:1/"
    for url in ("ftp://lapi.example/", "http:///v1"):
        with pytest.raises(ConfigError, match=f"^--lapi-url '{url}' must be http:// or https://"):
            load(["--api-key", "k", "--lapi-url", url])
    # httpx 0.28 refuses these, 0.23 (Debian 12's) reads a bad port as no host, and
    # neither minds a port past 65535: the same one line on every version.
    for url in ("http://:x", "http://lapi.example:x/", "http://lapi.example:65536/"):
        with pytest.raises(ConfigError, match=f"^--lapi-url '{url}' is not a URL$"):
            load(["--api-key", "k", "--lapi-url", url])


@pytest.mark.parametrize(("specs", "expected"), [
    (["ban=drop"], (("ban", Action.DROP),)),
    (["BAN = Tempfail", "custom=accept"], (("ban", Action.TEMPFAIL), ("custom", Action.ACCEPT))),
])
def test_actions(specs: list[str], expected: tuple[tuple[str, Action], ...]) -> None:
    argv = ["--api-key", "k"]
    for spec in specs:
        argv += ["--action", spec]
    assert load(argv).actions == expected


@pytest.mark.parametrize("spec", ["ban", "=drop", " =drop", "ban=explode", "x=y=drop"])
def test_bad_action_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError,
                       match=r"^--action '.*' is not KEY=reject\|tempfail\|drop\|tag\|accept "
                             r"with KEY a decision type, origin:NAME or scenario:GLOB$"):
        load(["--api-key", "k", "--action", spec])


def test_key_file_is_read_and_stripped(keyfile: Path, capsys: pytest.CaptureFixture) -> None:
    assert load(["--api-key-file", str(keyfile)]).api_key == "s3cret-key-value"
    assert capsys.readouterr().err == ""  # mode 600: no warning


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_warned_about(keyfile: Path, mode: int,
                                                     capsys: pytest.CaptureFixture) -> None:
    # a group other than the user's own private group: its members can read the key
    os.chown(keyfile, -1, grp.getgrnam("nogroup").gr_gid)
    keyfile.chmod(mode)
    assert load(["--api-key-file", str(keyfile)]).api_key == "s3cret-key-value"
    assert capsys.readouterr().err == (
        f"crowdsec-milter: warning: --api-key-file {keyfile} is readable by other users "
        "(chmod 600 it)\n")


def test_key_file_readable_by_the_users_own_group_is_no_leak(
        keyfile: Path, capsys: pytest.CaptureFixture) -> None:
    # the Debian package's key: root:crowdsec-milter 0640, read by the milter running as
    # crowdsec-milter, whose group (made by adduser --group) has no other member
    user = pwd.getpwuid(os.geteuid()).pw_name
    own = grp.getgrgid(os.getegid())
    assert own.gr_name == user and set(own.gr_mem) <= {user}
    os.chown(keyfile, -1, own.gr_gid)
    keyfile.chmod(0o640)
    assert load(["--api-key-file", str(keyfile)]).api_key == "s3cret-key-value"
    assert capsys.readouterr().err == ""


def test_key_file_writable_by_group_is_no_read_leak(keyfile: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    keyfile.chmod(0o620)
    load(["--api-key-file", str(keyfile)])
    assert capsys.readouterr().err == ""


def test_api_key_flag_is_stripped() -> None:
    assert load(["--api-key", " k3y \n"]).api_key == "k3y"


def test_key_problems_are_named(tmp_path: Path, keyfile: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe key")
    cases = [
        (["--api-key", "k", "--api-key-file", str(keyfile)],
         "--api-key and --api-key-file exclude each other: give one"),
        (["--api-key-file", str(empty)], f"--api-key-file {empty} is empty"),
        (["--api-key-file", str(tmp_path / "nope")],
         f"--api-key-file {tmp_path / 'nope'}: No such file or directory"),
        (["--api-key-file", str(binary)], f"--api-key-file {binary}: not text"),
        (["--api-key", " \n"], "--api-key is empty"),
        (["--api-key", ""], "--api-key is empty"),
        (["--api-key", "k\x01ey"], "--api-key: the key holds a line break, control or "
                                    "non-ASCII character; it must be one line of printable ASCII"),
        ([], "an API key is required: --api-key-file or --api-key "
             "(or CROWDSEC_MILTER_API_KEY_FILE), or a client certificate (--lapi-cert)"),
    ]
    for argv, message in cases:
        with pytest.raises(ConfigError) as info:
            load(argv)
        assert str(info.value) == message


def test_tls_problems_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    https = ["--lapi-url", "https://lapi.example/"]
    cases = [
        ([*https, "--api-key", "k", "--lapi-ca", str(tmp_path / "no-ca.pem")],
         f"--lapi-ca {tmp_path / 'no-ca.pem'}: not readable"),
        ([*https, "--lapi-cert", str(tmp_path / "nocert"), "--lapi-key", str(key)],
         f"--lapi-cert {tmp_path / 'nocert'}: not readable"),
        ([*https, "--lapi-cert", str(cert), "--lapi-key", str(tmp_path / "nokey")],
         f"--lapi-key {tmp_path / 'nokey'}: not readable"),
        ([*https, "--lapi-cert", str(cert)], "--lapi-cert and --lapi-key go together"),
        ([*https, "--api-key", "k", "--lapi-key", str(key)],
         "--lapi-cert and --lapi-key go together"),
        ([*https, "--lapi-cert", str(cert), "--lapi-key", str(key), "--api-key", "k"],
         "--lapi-cert replaces the API key: give one or the other"),
        ([*https, "--lapi-cert", str(cert), "--lapi-key", str(key), "--api-key-file", "f"],
         "--lapi-cert replaces the API key: give one or the other"),
        (["--lapi-cert", str(cert), "--lapi-key", str(key)],
         "--lapi-ca and --lapi-cert need an https:// --lapi-url"),
        (["--api-key", "k", "--lapi-ca", str(cert)],
         "--lapi-ca and --lapi-cert need an https:// --lapi-url"),
    ]
    for argv, message in cases:
        with pytest.raises(ConfigError) as info:
            load(argv)
        assert str(info.value) == message, argv


def test_cert_alone_needs_no_api_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    got = load(["--lapi-url", "https://lapi.example/", "--lapi-cert", str(cert),
                "--lapi-key", str(key)])
    assert got.api_key == "" and got.lapi_cert == str(cert) and got.lapi_ca is None


def test_reply_and_network_problems_are_named() -> None:
    cases = [
        (["--reject-reply", "450 4.7.1 no"], "--reject-reply: reply code must be 5xx"),
        (["--drop-reply", "451 4.7.1 bye"],
         "--drop-reply must use code 421 (the code that closes the session)"),
        (["--trusted-network", "10.0.0.0/33"], "--trusted-network: not a network: '10.0.0.0/33'"),
    ]
    for argv, message in cases:
        with pytest.raises(ConfigError) as info:
            load(["--api-key", "k", *argv])
        assert str(info.value).startswith(message), str(info.value)


def test_exempt_authenticated_needs_a_stage_that_knows_it() -> None:
    for stage in ("connect", "helo"):
        with pytest.raises(ConfigError) as info:
            load(["--api-key", "k", "--exempt-authenticated", "--stage", stage])
        assert str(info.value) == (
            f"--exempt-authenticated needs --stage mail or rcpt, not {stage}: whether a client "
            "authenticated is known only from MAIL FROM on ({auth_authen})")


@pytest.mark.parametrize("option", ["origins", "scenarios-containing",
                                    "scenarios-not-containing"])
def test_an_empty_name_in_a_selection_list_is_refused(option: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(["--api-key", "k", f"--{option}", "a,,b"])
    assert str(info.value) == f"--{option}: empty name in 'a,,b'"


def test_geoip_databases_reach_the_settings_or_are_refused_by_name(tmp_path: Path) -> None:
    from mmdb import write

    country, asn = write(tmp_path)
    got = load(["--api-key", "k", "--geoip-country-db", str(country),
                "--geoip-asn-db", str(asn)])
    assert (got.geoip_country_db, got.geoip_asn_db) == (str(country), str(asn))
    junk = tmp_path / "junk.mmdb"
    junk.write_text("not a database")
    for option in ("--geoip-country-db", "--geoip-asn-db"):
        with pytest.raises(ConfigError) as info:
            load(["--api-key", "k", option, str(junk)])
        assert str(info.value).startswith(f"{option} {junk}: not a readable MaxMind DB file")
