"""Settings to parts, and SIGHUP: which settings apply at once and which need a restart.

The restart-only list is a flag on the Settings fields (settings.RESTART_ONLY); the reload,
the example config's header and the systemd unit's comment all say the same."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
from crowdsec_milter.app import Activity, reload
from crowdsec_milter.cli import build_parser
from crowdsec_milter.policy import Action, Stage
from crowdsec_milter.settings import RESTART_ONLY, ConfigError, Settings
from crowdsec_milter.wiring import build

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", ["conf/crowdsec-milter.conf.example",
                                  "conf/systemd/crowdsec-milter.service"])
def test_the_restart_only_settings_are_named_where_operators_read(path: str) -> None:
    comments = " ".join(line.lstrip("# ").strip() for line in
                        (REPO / path).read_text().splitlines() if line.startswith("#"))
    found = re.search(r"need a restart: ([a-z, -]+?)\.", comments)
    assert found, f"{path} does not list the settings that need a restart"
    named = [n.strip() for n in found.group(1).split(",")]
    assert named == [n.replace("_", "-") for n in RESTART_ONLY]
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    assert {"--" + n for n in named} <= flags


@pytest.fixture
def parts():
    built = build(Settings(event_log="none", usage_metrics_interval=0.0))
    yield built
    built.client.close()


def test_reload_applies_what_it_can_and_names_what_needs_a_restart(
        parts, caplog: pytest.LogCaptureFixture) -> None:
    old = Settings(event_log="none", usage_metrics_interval=0.0)
    new = dataclasses.replace(old, stage=Stage.RCPT, dry_run=True,
                              socket="inet:9999@127.0.0.1", cache_size=5)
    with caplog.at_level(logging.INFO, "crowdsec_milter"):
        running = reload(parts, Activity(), old, lambda: new)
    assert (running.stage, running.dry_run) == (Stage.RCPT, True)
    assert parts.context.stage is Stage.RCPT and parts.policy is parts.context.policy
    assert (running.socket, running.cache_size) == (old.socket, old.cache_size)
    assert "--socket, --cache-size change(s) need a restart" in caplog.text


def test_a_reload_that_cannot_load_keeps_the_running_settings(
        parts, caplog: pytest.LogCaptureFixture) -> None:
    old = Settings(event_log="none", usage_metrics_interval=0.0)
    context = parts.context

    def refuse() -> Settings:
        raise ConfigError("--stage 'nowhere' is not a stage")

    with caplog.at_level(logging.INFO, "crowdsec_milter"):
        assert reload(parts, Activity(), old, refuse) is old
    assert parts.context is context
    assert "reload refused, keeping the running config: --stage" in caplog.text


def test_reload_changes_selection_actions_and_tag_header_without_a_resync(parts) -> None:
    old = Settings(event_log="none", usage_metrics_interval=0.0)
    new = dataclasses.replace(old, origins=("capi",), scenarios_not_containing=("http",),
                              actions=(("origin:capi", Action.TAG),), tag_header="X-Tagged")
    source = parts.source
    reload(parts, Activity(), old, lambda: new)
    assert parts.source is source  # the decisions held stay
    assert parts.policy.selection.why_not("cscli", "x") == "--origins"
    assert parts.policy.selection.why_not("CAPI", "crowdsecurity/http-probing") == \
        "--scenarios-not-containing"
    assert parts.context.tag_header == "X-Tagged" and parts.context.tagging
