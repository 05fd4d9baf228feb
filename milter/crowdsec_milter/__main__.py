"""`python -m crowdsec_milter`."""

import sys

from .cli import main

sys.exit(main())
