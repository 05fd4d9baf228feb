"""Test certificates made with openssl: a CA, a server certificate for 127.0.0.1 and client
certificates with a chosen OU (CrowdSec tells bouncers from agents by the OU)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str = "test-ca") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         f"/CN={name}", "-keyout", str(key), "-out", str(cert))
    return cert, key


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
