"""The Debian package's version is the program's: debian/changelog's newest entry carries
crowdsec_milter.__version__ (packaging/build-deb.sh refuses to build otherwise, and a
mismatch would ship a .deb whose --version and dpkg -l disagree)."""

from __future__ import annotations

import re
from pathlib import Path

from crowdsec_milter import __version__

DEBIAN = Path(__file__).resolve().parent.parent / "debian"


def test_changelog_version_is_the_program_version() -> None:
    first = (DEBIAN / "changelog").read_text(encoding="utf-8").splitlines()[0]
    m = re.fullmatch(r"crowdsec-milter \(([^)]+)\) [a-z-]+; urgency=\w+", first)
    assert m, first
    # a native package: the version has no Debian revision
    assert m.group(1) == __version__


def test_unit_is_the_repositorys_with_execstart_in_usr_bin() -> None:
    rules = (DEBIAN / "rules").read_text(encoding="utf-8")
    unit = (DEBIAN.parent / "conf/systemd/crowdsec-milter.service").read_text(encoding="utf-8")
    # debian/rules rewrites exactly this line; the package must not carry a unit of its own
    assert ("ExecStart=/usr/local/bin/crowdsec-milter -c "
            "/etc/crowdsec-milter/crowdsec-milter.conf\n") in unit
    assert "conf/systemd/crowdsec-milter.service > debian/crowdsec-milter.service" in rules
