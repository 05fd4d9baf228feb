"""Integration fixtures: real CrowdSec and Postfix from Debian's packages, run privately.

These tests need root and the packages integration/setup.sh installs; they never skip:
a missing package is a failure, as it would be for a user.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Our helpers beside the tests.
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))
