"""crowdsec-milter: CrowdSec bouncer and sensor for Postfix and Sendmail."""

__version__ = "0.1.0"
