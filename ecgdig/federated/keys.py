"""Site keys and the federation's registry of public keys (Ed25519, via ``cryptography``).

Each site (and the coordinator) holds one Ed25519 key pair:

- ``<site>.key.pem``: the private key, PKCS#8 PEM, written with mode 0600 and refused on load if
  other users can read it;
- ``<site>.pub.json``: ``{"format": "ecgdig-public-key", "version": 1, "site_id": ...,
  "algorithm": "Ed25519", "public_key": <base64 of the raw 32 bytes>, "fingerprint": ...}``,
  which is what a site sends to the coordinator.

The coordinator's ``registry.json`` maps each site id to its public key; only updates signed by a
registered key are ever aggregated. Compare :func:`public_key_fingerprint` over the phone (or any
channel other than the one that carried the key) before registering a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ecgdig.errors import ConfigError
from ecgdig.federated.files import is_valid_id, read_json_file
from ecgdig.io.atomic import atomic_path, atomic_write_text

__all__ = [
    "PUBLIC_KEY_FORMAT",
    "REGISTRY_FORMAT",
    "KeyPaths",
    "Registry",
    "SiteKey",
    "add_site",
    "create_registry",
    "generate_site_key",
    "load_public_key",
    "load_registry",
    "load_site_key",
    "public_key_fingerprint",
]

PUBLIC_KEY_FORMAT = "ecgdig-public-key"
REGISTRY_FORMAT = "ecgdig-registry"
_VERSION = 1
_MAX_JSON_BYTES = 4 * 1024**2


def public_key_fingerprint(public_key: bytes) -> str:
    """Return a short human-comparable fingerprint of a raw public key.

    The first 16 bytes of SHA-256 of the raw key, as 8 groups of 4 hex digits.

    Parameters
    ----------
    public_key : bytes
        Raw 32-byte Ed25519 public key.

    Returns
    -------
    str
        8 groups of 4 hex digits joined by ``-`` (39 characters).

    Examples
    --------
    >>> public_key_fingerprint(bytes(32))
    '6668-7aad-f862-bd77-6c8f-c18b-8e9f-8e20'
    """
    digest = hashlib.sha256(public_key).hexdigest()[:32]
    return "-".join(digest[i : i + 4] for i in range(0, 32, 4))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _decode_public_key(value: object, where: str, path: Path) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: public key must be a base64 string", path)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: public key is not valid base64", path) from None
    if len(raw) != 32:
        raise ConfigError(f"{where}: public key must be 32 bytes, got {len(raw)}", path)
    return raw


@dataclass(frozen=True)
class SiteKey:
    """A site's (or the coordinator's) signing identity.

    Parameters
    ----------
    site_id : str
        The id its files are signed under.
    private_key : Ed25519PrivateKey
        The signing key (never shown in ``repr``).
    """

    site_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_key_b64(self) -> str:
        """The public key as base64, as stored in registries and plans."""
        return _b64(self.public_key)

    @classmethod
    def generate(cls, site_id: str) -> SiteKey:
        """Return a fresh key pair for ``site_id`` (from the OS random source), not written anywhere."""
        if not is_valid_id(site_id):
            raise ConfigError(f"invalid site id {site_id!r}: use 1-64 characters from A-Z a-z 0-9 . _ -")
        return cls(site_id=site_id, private_key=Ed25519PrivateKey.generate())


@dataclass(frozen=True)
class KeyPaths:
    """Files written by :func:`generate_site_key`."""

    private_key: Path
    public_key: Path
    fingerprint: str


def generate_site_key(site_id: str, out_dir: str | Path, *, overwrite: bool = False) -> KeyPaths:
    """Create a key pair and write ``<site_id>.key.pem`` (mode 0600) and ``<site_id>.pub.json``.

    Parameters
    ----------
    site_id : str
        The site (or coordinator) id.
    out_dir : str or Path
        Folder for both files (created if missing). Keep the private key off shared media.
    overwrite : bool, optional
        Replace existing files; by default an existing key is never overwritten.

    Returns
    -------
    KeyPaths
        The two paths and the public key's fingerprint.

    Raises
    ------
    ConfigError
        Invalid id, or a key file exists and ``overwrite`` is false.
    """
    key = SiteKey.generate(site_id)
    out = Path(out_dir)
    private_path = out / f"{site_id}.key.pem"
    public_path = out / f"{site_id}.pub.json"
    for existing in (private_path, public_path):
        if existing.exists() and not overwrite:
            raise ConfigError("key file already exists; refusing to overwrite it", existing)
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with atomic_path(private_path, mode=0o600) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
    fingerprint = public_key_fingerprint(key.public_key)
    record = {
        "format": PUBLIC_KEY_FORMAT,
        "version": _VERSION,
        "site_id": site_id,
        "algorithm": "Ed25519",
        "public_key": key.public_key_b64,
        "fingerprint": fingerprint,
    }
    atomic_write_text(public_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return KeyPaths(private_key=private_path, public_key=public_path, fingerprint=fingerprint)


def load_site_key(path: str | Path, site_id: str | None = None) -> SiteKey:
    """Load a private key written by :func:`generate_site_key`.

    Parameters
    ----------
    path : str or Path
        The ``<site_id>.key.pem`` file.
    site_id : str, optional
        The id to sign under; by default taken from the file name (``<site_id>.key.pem``).

    Returns
    -------
    SiteKey
        The signing identity.

    Raises
    ------
    ConfigError
        Missing file, readable by group or others (POSIX), not an unencrypted Ed25519 PKCS#8 PEM key,
        or no site id.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("private key file not found", path)
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ConfigError("private key file is accessible by other users; run `chmod 600` on it", path)
    if site_id is None:
        if not path.name.endswith(".key.pem"):
            raise ConfigError(
                "cannot tell the site id: name the file <site_id>.key.pem or pass site_id", path
            )
        site_id = path.name[: -len(".key.pem")]
    if not is_valid_id(site_id):
        raise ConfigError(f"invalid site id {site_id!r}", path)
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not an unencrypted PEM private key ({exc})", path) from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ConfigError(f"expected an Ed25519 key, got {type(private_key).__name__}", path)
    return SiteKey(site_id=site_id, private_key=private_key)


def _read_json(path: Path, what: str) -> Any:
    return read_json_file(path, what, max_bytes=_MAX_JSON_BYTES)


def load_public_key(path: str | Path) -> tuple[str, bytes]:
    """Read a ``<site_id>.pub.json`` file.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    site_id : str
        The site the key belongs to.
    public_key : bytes
        The raw 32-byte key.

    Raises
    ------
    ConfigError
        Schema violation, or a fingerprint that does not match the key.
    """
    path = Path(path)
    data = _read_json(path, "public key file")
    if (
        not isinstance(data, dict)
        or data.get("format") != PUBLIC_KEY_FORMAT
        or data.get("version") != _VERSION
    ):
        raise ConfigError(f"not an {PUBLIC_KEY_FORMAT} version {_VERSION} file", path)
    if data.get("algorithm") != "Ed25519":
        raise ConfigError(f"unsupported algorithm {data.get('algorithm')!r}", path)
    site_id = data.get("site_id")
    if not isinstance(site_id, str) or not is_valid_id(site_id):
        raise ConfigError(f"invalid site id {site_id!r}", path)
    raw = _decode_public_key(data.get("public_key"), "public_key", path)
    if "fingerprint" in data and data["fingerprint"] != public_key_fingerprint(raw):
        raise ConfigError("fingerprint does not match the public key", path)
    return site_id, raw


@dataclass(frozen=True)
class Registry:
    """The coordinator's trusted site keys.

    Parameters
    ----------
    federation_id : str
        The federation; protocol files naming another federation are rejected.
    sites : mapping of str to bytes
        Site id -> raw 32-byte Ed25519 public key.
    """

    federation_id: str
    sites: Mapping[str, bytes]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", MappingProxyType(dict(sorted(self.sites.items()))))

    def to_json(self) -> str:
        """Return the registry file's text (sorted, indented, ending in a newline)."""
        data = {
            "format": REGISTRY_FORMAT,
            "version": _VERSION,
            "federation_id": self.federation_id,
            "sites": {site: _b64(key) for site, key in self.sites.items()},
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_registry(path: str | Path) -> Registry:
    """Read and schema-check a ``registry.json``.

    Parameters
    ----------
    path : str or Path
        The registry file.

    Returns
    -------
    Registry
        The federation id and site keys.

    Raises
    ------
    ConfigError
        Missing, not JSON, a schema violation, an invalid site id or key, or one key under two ids.
    """
    path = Path(path)
    data = _read_json(path, "registry")
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT or data.get("version") != _VERSION:
        raise ConfigError(f"not an {REGISTRY_FORMAT} version {_VERSION} file", path)
    unknown = sorted(set(data) - {"format", "version", "federation_id", "sites"})
    if unknown:
        raise ConfigError(f"unknown registry field(s) {', '.join(unknown)}", path)
    federation_id = data.get("federation_id")
    if not isinstance(federation_id, str) or not is_valid_id(federation_id):
        raise ConfigError(f"invalid federation id {federation_id!r}", path)
    sites = data.get("sites")
    if not isinstance(sites, dict):
        raise ConfigError("'sites' must be an object mapping site ids to public keys", path)
    keys: dict[str, bytes] = {}
    for site_id, value in sites.items():
        if not is_valid_id(site_id):
            raise ConfigError(f"invalid site id {site_id!r}", path)
        keys[site_id] = _decode_public_key(value, f"site {site_id!r}", path)
    if len(set(keys.values())) != len(keys):
        raise ConfigError("the same public key is registered under two site ids", path)
    return Registry(federation_id=federation_id, sites=keys)


def create_registry(path: str | Path, federation_id: str, *, overwrite: bool = False) -> Registry:
    """Write an empty registry for a new federation.

    Parameters
    ----------
    path : str or Path
        Usually ``<federation>/registry.json``.
    federation_id : str
        The federation's id.
    overwrite : bool, optional
        Replace an existing registry.

    Returns
    -------
    Registry
        The empty registry.

    Raises
    ------
    ConfigError
        Invalid id, or the file exists and ``overwrite`` is false.
    """
    path = Path(path)
    if not is_valid_id(federation_id):
        raise ConfigError(
            f"invalid federation id {federation_id!r}: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    if path.exists() and not overwrite:
        raise ConfigError("registry already exists; refusing to overwrite it", path)
    registry = Registry(federation_id=federation_id, sites={})
    atomic_write_text(path, registry.to_json())
    return registry


def add_site(registry_path: str | Path, public_key_path: str | Path, *, replace: bool = False) -> Registry:
    """Register a site's public key (from its ``<site_id>.pub.json``).

    Parameters
    ----------
    registry_path : str or Path
        The registry to update (rewritten atomically).
    public_key_path : str or Path
        The site's public key file.
    replace : bool, optional
        Allow replacing the key of an already registered site (key rotation).

    Returns
    -------
    Registry
        The updated registry.

    Raises
    ------
    ConfigError
        The site is registered with another key and ``replace`` is false, or the key is already
        registered under another site id.
    """
    registry = load_registry(registry_path)
    site_id, raw = load_public_key(public_key_path)
    existing = registry.sites.get(site_id)
    if existing is not None and existing != raw and not replace:
        raise ConfigError(
            f"site {site_id!r} is already registered with another key (pass replace to rotate it)",
            registry_path,
        )
    owners = [other for other, key in registry.sites.items() if key == raw and other != site_id]
    if owners:
        raise ConfigError(f"this public key is already registered for site {owners[0]!r}", registry_path)
    updated = Registry(federation_id=registry.federation_id, sites={**registry.sites, site_id: raw})
    atomic_write_text(registry_path, updated.to_json())
    return updated
