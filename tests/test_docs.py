"""The README's options table and crowdsec-milter --help list the same flags."""

from __future__ import annotations

import re
from pathlib import Path

from crowdsec_milter.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_options_table_matches_the_parser() -> None:
    text = README.read_text()
    table = text[text.index("## Options"):text.index("## Operating it")]
    documented = set(re.findall(r"`(--[a-z0-9-]+)", table))
    real = {o for a in build_parser()._actions for o in a.option_strings
            if o.startswith("--") and o not in ("--help", "--version")}
    assert documented == real, (documented ^ real)


def test_readme_first_screen_has_the_two_commands() -> None:
    first = README.read_text().splitlines()[:25]
    assert "bash integration/demo.sh" in "\n".join(first)
    assert "bash integration/run-tests.sh" in "\n".join(first)
    for script in ("integration/demo.sh", "integration/run-tests.sh"):
        assert (README.parent / script).exists()
