"""Signed bundles: an Ed25519 signature over ``manifest.json`` in ``manifest.json.sig``.

The manifest lists every other file with its sha256, so one signature covers the whole bundle. Keys are the
usual PEM files (``openssl genpkey -algorithm ed25519 -out key.pem``; ``openssl pkey -in key.pem -pubout -out
key.pub``). Ed25519 signatures are deterministic: re-exporting with the same key gives the same bytes.
Needs the ``cryptography`` package, and only when a key is given (``pip install 'tddfa-edge[signing]'``).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Sequence

from tddfa_edge.contracts.errors import BackendUnavailableError, BundleError, UsageError


def _serialization():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    except ImportError:
        raise BackendUnavailableError("signed bundles need the cryptography package: pip install 'tddfa-edge[signing]'") from None
    return serialization, Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature


def _read_key(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | os.PathLike):
    serialization, private_type, _, _ = _serialization()
    try:
        key = serialization.load_pem_private_key(_read_key(path, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, private_type):
        raise UsageError(f"{path} is not an Ed25519 key (make one with: openssl genpkey -algorithm ed25519 -out key.pem)")
    return key


def load_public_key(path: str | os.PathLike):
    serialization, _, public_type, _ = _serialization()
    try:
        key = serialization.load_pem_public_key(_read_key(path, "public key"))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, public_type):
        raise UsageError(f"{path} is not an Ed25519 public key")
    return key


def sign(manifest_bytes: bytes, private_key_path: str | os.PathLike) -> bytes:
    """The content of ``manifest.json.sig``: the base64 signature and a newline."""
    return base64.b64encode(load_private_key(private_key_path).sign(manifest_bytes)) + b"\n"


def public_key_pem(private_key_path: str | os.PathLike) -> bytes:
    serialization, _, _, _ = _serialization()
    return load_private_key(private_key_path).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_signature(root: Path, manifest_bytes: bytes, signature_path: Path, trusted_keys: Sequence[str | os.PathLike]) -> None:
    """Refuse the bundle unless ``signature_path`` holds a valid signature of the manifest by one of the keys."""
    _, _, _, invalid = _serialization()
    keys = [load_public_key(k) for k in trusted_keys]
    if not signature_path.is_file():
        raise BundleError(f"bundle {root} refused: it is not signed ({signature_path.name} missing) and a trusted key was given")
    try:
        signature = base64.b64decode(signature_path.read_bytes().strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"bundle {root} refused: {signature_path.name} is not a base64 signature") from None
    if signature_path.read_bytes() != base64.b64encode(signature) + b"\n":
        raise BundleError(f"bundle {root} refused: {signature_path.name} is not in its canonical form")
    for key in keys:
        try:
            key.verify(signature, manifest_bytes)
            return
        except invalid:
            continue
    raise BundleError(f"bundle {root} refused: {signature_path.name} does not verify with the trusted key(s)")


__all__ = ["sign", "check_signature", "load_private_key", "load_public_key", "public_key_pem"]
