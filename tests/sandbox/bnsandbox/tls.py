"""A throwaway CA and a server certificate for the emulator's HTTPS mode, made with the openssl
CLI: clients verify the server against the CA (kube-rs' rustls refuses a self-signed CA used
directly as the server certificate), with the host's address as an IP SAN."""

from __future__ import annotations

import ipaddress
import pathlib
import subprocess


class TlsError(RuntimeError):
    pass


def _openssl(*args: str) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise TlsError(f"openssl {' '.join(args[:2])}: {res.stderr.strip()}")


def make_certs(directory: pathlib.Path, host: str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """Returns (ca.crt, server.crt, server.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    try:
        ipaddress.ip_address(host)
        san = f"IP:{host},DNS:localhost"
    except ValueError:
        san = f"DNS:{host},DNS:localhost"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
             "-days", "2", "-subj", "/CN=bnsandbox-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=bnsandbox-apiserver")
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca_crt, crt, key
