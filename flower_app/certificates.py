"""The credentials of a deployment: its test CA and certificates, SuperNode key pairs, their registration, secrets.

* :func:`make_certificates`: ``scripts/make_certificates.sh`` (a CA, the SuperLink's
  certificate, ``SUPERNODE_KEYS`` SuperNode key pairs); it refuses to replace an existing CA
  unless ``force``;
* :func:`new_key_pair`: one more SuperNode key pair (a device joining mid-run);
* :func:`register_keys`: ``flwr supernode register`` each public key at a SuperLink
  started with ``--enable-supernode-auth``, all in one CLI process (one start-up, not N);
* :func:`write_secret`: a random owner-only secret file (``--superexec-auth-secret-file``):
  only the processes given it may acquire a SuperLink's or SuperNode's tasks.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from engine.errors import UserError

MAKE_CERTIFICATES = Path(__file__).resolve().parents[1] / "scripts" / "make_certificates.sh"
# `flwr supernode register KEY CONNECTION` for every KEY given, in one process: the flwr CLI itself, called N times.
REGISTER_KEYS = """
import sys
from flwr.cli.app import app
connection, keys = sys.argv[1], sys.argv[2:]
for key in keys:
    code = app(["supernode", "register", key, connection], standalone_mode=False)
    if code:
        sys.exit(f"flwr supernode register {key} {connection}: exit code {code}")
"""


class CertificateError(UserError, RuntimeError):
    """The certificates or keys could not be made or registered; says why (e.g. an existing CA kept)."""


def make_certificates(folder: Path, supernode_keys: int, names: Sequence[str] = (), force: bool = True,
                      timeout: float = 120.0) -> None:
    """A test CA, the SuperLink's certificate (also valid for ``names``) and ``supernode_keys`` key pairs.

    ``force=False``: a folder that already holds a CA is refused (devices trust it), not overwritten.
    """
    command = ["bash", str(MAKE_CERTIFICATES), *(["--force"] if force else []), str(folder), *names]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "SUPERNODE_KEYS": str(supernode_keys)})
    if result.returncode != 0:
        raise CertificateError(f"make_certificates.sh failed: {result.stderr.strip()[-500:]}")


def new_key_pair(key: Path) -> None:
    """A new SuperNode key pair ``key`` / ``key.pub`` (ECDSA P-384, as make_certificates.sh), replacing any."""
    for path in (key, key.with_suffix(".pub")):
        path.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", key.name, "-f", str(key)],
                   check=True, capture_output=True, timeout=60)


def register_keys(keys: Sequence[Path], connection: str, env: dict[str, str], cwd: Path, timeout: float) -> None:
    """``flwr supernode register`` each public key at ``connection`` (of ``env``'s ``FLWR_HOME``), in one process."""
    result = subprocess.run([sys.executable, "-c", REGISTER_KEYS, connection, *map(str, keys)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, start_new_session=True)
    if result.returncode != 0:
        raise CertificateError(f"registering SuperNode keys failed: {(result.stdout + result.stderr)[-1000:]}")


def write_secret(path: Path) -> Path:
    """``path``: 32 random bytes in an owner-only file, made if it does not exist yet (kept if it does)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path
