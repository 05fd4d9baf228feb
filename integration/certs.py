"""Test certificates made with openssl: a CA, a server certificate for 127.0.0.1 and client
certificates with a chosen OU (CrowdSec tells bouncers from agents by the OU).

The CA carries keyUsage (keyCertSign, cRLSign), as strict X.509 checking (Python 3.13's
default, and the milter's on every Python) requires of a CA; `key_usage=False` makes one
without it, as `openssl req -x509` does with Debian's default configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str = "test-ca", *, key_usage: bool = True,
            key: Path | None = None, file_name: str = "") -> tuple[Path, Path]:
    """A self-signed CA; with `key`, a CA certificate for an existing key (the same CA
    reissued: what it signed verifies against either certificate)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = folder / f"{file_name or name}.pem"
    new_key = ["-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / f"{name}.key")]
    usage = ["-addext", "keyUsage=critical,keyCertSign,cRLSign"] if key_usage else []
    _run("req", "-x509", *(["-key", str(key)] if key else new_key), "-days", "2", "-subj",
         f"/CN={name}", *usage, "-out", str(cert))
    return cert, key or folder / f"{name}.key"


def has_key_usage(cert: Path) -> bool:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"],
                         check=True, capture_output=True, text=True).stdout
    return "X509v3 Key Usage" in out


def make_cert(folder: Path, name: str, ca: tuple[Path, Path], *, ou: str = "",
              server: bool = False) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    subject = f"/CN={name}" + (f"/OU={ou}" if ou else "")
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(key),
         "-out", str(csr))
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext))
    return cert, key
