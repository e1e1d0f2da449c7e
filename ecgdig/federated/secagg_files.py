"""The signed files of secure aggregation: one frozen dataclass per protocol step.

Every file that crosses a hospital boundary during secure aggregation is signed with the sender's
Ed25519 key and bound to one protocol run: the federation, the round, the round's global model
(``base_sha256``) and, after the roster, the roster's hash. A file from another round, federation
or run is rejected as stale or replayed; an edited one fails its signature. Six kinds
(``docs/formats.md``, section 9):

=================  ===========  =====================================================================
kind               signed by    content
=================  ===========  =====================================================================
``advertise``      site         X25519 public keys (share encryption, pairwise masks), example count
``roster``         coordinator  the sites that advertised, their keys, weights, threshold ``t``, ``f``
``shares``         site         Shamir shares of its self-mask seed and mask key, AES-GCM per recipient
``masked-input``   site         safetensors of ``uint32``: encoded weighted update + all masks
``unmask-request`` coordinator  sites that shared (U2) and sites whose masked input arrived (U3)
``reveal``         site         self-mask shares of survivors, mask-key shares of dropped sites
=================  ===========  =====================================================================

JSON kinds are one line of canonical JSON (:func:`ecgdig.federated.files.canonical_json`) plus a
newline; a reader re-serializes and refuses any other spelling. The masked input is a safetensors
file whose ``__metadata__`` holds exactly one key, ``"ecgdig.secagg"``, with the canonical signed
header. The signed message is the ASCII text ``ecgdig-secagg signed document v1``, a NUL byte,
then the canonical header without its signature: a prefix distinct from the one of model and update
files, so no signature can be replayed across the two kinds of message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import safetensors.numpy
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from numpy.typing import NDArray
from safetensors import SafetensorError, safe_open

from ecgdig.errors import UpdateRejectedError
from ecgdig.federated.files import is_valid_id, payload_sha256
from ecgdig.io.atomic import atomic_write_bytes
from ecgdig.io.strict_json import canonical_json, loads_strict

__all__ = [
    "MASKED_INPUT_KEY",
    "SECAGG_FORMAT",
    "SECAGG_VERSION",
    "Advertisement",
    "EncryptedShare",
    "MaskedInput",
    "MaskedInputHeader",
    "Reveal",
    "Roster",
    "RosterEntry",
    "SecAggDocument",
    "SharesMessage",
    "UnmaskRequest",
    "document_sha256",
    "masked_input_bytes",
    "read_document",
    "read_masked_input",
    "sign_document",
    "verify_document",
    "write_document",
]

SECAGG_FORMAT = "ecgdig-secagg"
SECAGG_VERSION = 1
MASKED_INPUT_KEY = "ecgdig.secagg"
SIGNATURE_CONTEXT = b"ecgdig-secagg signed document v1\x00"
MAX_DOCUMENT_BYTES = 16 * 1024**2
"""Bound on a JSON protocol file (a 64-site shares file is about 40 kB)."""
MAX_MASKED_BYTES = 2 * 1024**3
_MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024**2
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_SHARE = re.compile(r"[0-9a-f]{1,132}")

_Doc = TypeVar("_Doc", bound="SecAggDocument")


# --------------------------------------------------------------------------------------------------
# Field checks: each returns the value or raises ValueError with what was expected.


def _id(value: Any) -> str:
    if not is_valid_id(value):
        raise ValueError("1-64 characters from A-Z a-z 0-9 . _ -")
    return str(value)


def _int(value: Any, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"an integer >= {minimum}")
    return value


def _hex64(value: Any) -> str:
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise ValueError("64 lowercase hex digits")
    return value


def _b64(value: Any, size: int | None = None) -> str:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or (size is not None and len(raw) != size) or base64.b64encode(raw).decode() != value:
        raise ValueError("base64" + (f" of {size} bytes" if size else ""))
    return str(value)


def _key32(value: Any) -> str:
    return _b64(value, 32)


def _float(value: Any) -> float:
    if not isinstance(value, float) or not value >= 0 or value == float("inf"):
        raise ValueError("a finite float >= 0")
    return value


def _ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or [_id(v) for v in value] != sorted(set(value)):
        raise ValueError("a sorted list of distinct site ids")
    return tuple(value)


def _share_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("an object mapping site ids to hex shares")
    for key, share in value.items():
        _id(key)
        if not isinstance(share, str) or _HEX_SHARE.fullmatch(share) is None:
            raise ValueError("an object mapping site ids to hex shares")
    return dict(sorted(value.items()))


def _hex_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("an object mapping site ids to SHA-256 hex digests")
    return {_id(k): _hex64(v) for k, v in sorted(value.items())}


# --------------------------------------------------------------------------------------------------
# The documents


@dataclass(frozen=True)
class SecAggDocument:
    """Fields every secure-aggregation file carries: what it is and which protocol run it belongs to.

    Parameters
    ----------
    federation_id : str
        The federation.
    round : int
        The round being aggregated (the round of the global model the sites trained from).
    base_sha256 : str
        ``payload_sha256`` of that global model.
    site_id : str
        The signer: a site, or the coordinator for ``roster`` and ``unmask-request``.
    signature : str or None
        Base64 Ed25519 signature (see the module docstring); None before signing.
    """

    KIND: ClassVar[str] = ""
    _FIELD_CHECKS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    federation_id: str
    round: int
    base_sha256: str
    site_id: str
    signature: str | None

    def to_dict(self, *, with_signature: bool = True) -> dict[str, Any]:
        """Return the JSON object written to the file.

        Parameters
        ----------
        with_signature : bool, optional
            Include ``signature`` (when set).

        Returns
        -------
        dict
            Field name -> JSON value, with ``format``, ``version`` and ``kind``.
        """
        data: dict[str, Any] = {"format": SECAGG_FORMAT, "version": SECAGG_VERSION, "kind": self.KIND}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "signature" and (value is None or not with_signature):
                continue
            data[item.name] = _to_json_value(value)
        return data

    def signing_message(self) -> bytes:
        """Return the bytes the signature covers: context prefix + canonical header without signature."""
        return SIGNATURE_CONTEXT + canonical_json(self.to_dict(with_signature=False)).encode("utf-8")

    @classmethod
    def from_dict(cls: type[_Doc], data: Any, path: Path | None = None) -> _Doc:
        """Parse and schema-check a document of this kind.

        Parameters
        ----------
        data : object
            The parsed JSON.
        path : Path, optional
            The file, for error messages.

        Returns
        -------
        SecAggDocument
            The document (signature not verified: see :func:`verify_document`).

        Raises
        ------
        UpdateRejectedError
            Wrong format, version or kind; a missing, unknown or ill-typed field.
        """
        if not isinstance(data, dict) or data.get("format") != SECAGG_FORMAT:
            raise UpdateRejectedError(f"not an {SECAGG_FORMAT} protocol file", path)
        if data.get("version") != SECAGG_VERSION or isinstance(data.get("version"), bool):
            raise UpdateRejectedError(f"unsupported {SECAGG_FORMAT} version {data.get('version')!r}", path)
        if data.get("kind") != cls.KIND:
            raise UpdateRejectedError(f"expected a {cls.KIND} file, got {data.get('kind')!r}", path)
        checks: dict[str, Callable[[Any], Any]] = {
            "federation_id": _id,
            "round": _int,
            "base_sha256": _hex64,
            "site_id": _id,
            **cls._FIELD_CHECKS,
        }
        names = set(checks) | {"signature"}
        unknown = sorted(set(data) - names - {"format", "version", "kind"})
        missing = sorted(set(checks) - set(data))
        if unknown or missing:
            what = f"unknown field(s) {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
            raise UpdateRejectedError(f"invalid {cls.KIND} file: {what}", path)
        values: dict[str, Any] = {}
        for name, check in checks.items():
            try:
                values[name] = check(data[name])
            except ValueError as exc:
                raise UpdateRejectedError(f"invalid {cls.KIND} file: {name} must be {exc}", path) from None
        signature = data.get("signature")
        if signature is not None and not isinstance(signature, str):
            raise UpdateRejectedError(f"invalid {cls.KIND} file: signature must be a base64 string", path)
        return cls(**values, signature=signature)


def _to_json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json_value(v) for k, v in value.items()}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


@dataclass(frozen=True)
class Advertisement(SecAggDocument):
    """Step 1 (site): the site's two X25519 public keys and its example count.

    Parameters
    ----------
    num_examples : int
        ``n_k`` >= 1 (public, as in a plain update header); sets the site's weight.
    cipher_public_key : str
        Base64 X25519 key for encrypting Shamir shares to this site.
    mask_public_key : str
        Base64 X25519 key for pairwise masks (its private key is Shamir-shared).
    """

    KIND: ClassVar[str] = "advertise"
    _FIELD_CHECKS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "num_examples": lambda v: _int(v, 1),
        "cipher_public_key": _key32,
        "mask_public_key": _key32,
    }
    num_examples: int = 0
    cipher_public_key: str = ""
    mask_public_key: str = ""


@dataclass(frozen=True)
class RosterEntry:
    """One site of the roster.

    Parameters
    ----------
    site_id : str
        The site.
    share_x : int
        Its Shamir x-coordinate (1-based position in the roster).
    signing_key : str
        Base64 Ed25519 public key from the coordinator's registry; peers verify the site's files
        with it.
    cipher_public_key, mask_public_key : str
        From its advertisement.
    num_examples : int
        From its advertisement.
    weight : float
        Its aggregation weight, at most 1: ``min(n_k / n_cap, 1)`` under DP, else ``n_k / max_j n_j``.
    advertise_sha256 : str
        SHA-256 of its advertisement file's canonical text.
    """

    site_id: str
    share_x: int
    signing_key: str
    cipher_public_key: str
    mask_public_key: str
    num_examples: int
    weight: float
    advertise_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of the entry."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


def _roster_entries(value: Any) -> tuple[RosterEntry, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("a non-empty list of site entries")
    checks: dict[str, Callable[[Any], Any]] = {
        "site_id": _id,
        "share_x": lambda v: _int(v, 1),
        "signing_key": _key32,
        "cipher_public_key": _key32,
        "mask_public_key": _key32,
        "num_examples": lambda v: _int(v, 1),
        "weight": _float,
        "advertise_sha256": _hex64,
    }
    entries = []
    for position, item in enumerate(value, start=1):
        if not isinstance(item, dict) or set(item) != set(checks):
            raise ValueError(f"site entries with exactly the fields {', '.join(sorted(checks))}")
        entry = RosterEntry(**{name: check(item[name]) for name, check in checks.items()})
        if entry.share_x != position or not 0 < entry.weight <= 1:
            raise ValueError("entries numbered 1..n in order, with weights in (0, 1]")
        entries.append(entry)
    if [e.site_id for e in entries] != sorted({e.site_id for e in entries}):
        raise ValueError("entries sorted by distinct site id")
    return tuple(entries)


@dataclass(frozen=True)
class Roster(SecAggDocument):
    """Coordinator's answer to step 1: who takes part, with which keys, threshold and encoding.

    Parameters
    ----------
    threshold : int
        ``t``: shares needed to rebuild a secret, and the fewest survivors a sum is released for.
    clip_norm : float
        ``S``.
    frac_bits : int
        ``f`` of the fixed-point encoding (:func:`~ecgdig.federated.secagg_masking.fractional_bits`
        of the roster size and ``S``).
    session : str
        64 hex digits of coordinator randomness, so two runs of the same round never share a roster
        hash (a file of one run is then a replay in the other).
    sites : tuple of RosterEntry
        Sorted by site id.
    """

    KIND: ClassVar[str] = "roster"
    _FIELD_CHECKS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "threshold": lambda v: _int(v, 2),
        "clip_norm": _float,
        "frac_bits": lambda v: _int(v, 1),
        "session": _hex64,
        "sites": _roster_entries,
    }
    threshold: int = 0
    clip_norm: float = 0.0
    frac_bits: int = 0
    session: str = ""
    sites: tuple[RosterEntry, ...] = ()

    def entry(self, site_id: str) -> RosterEntry | None:
        """Return the entry of ``site_id``, or None if the site is not in the roster."""
        return next((e for e in self.sites if e.site_id == site_id), None)

    @property
    def site_ids(self) -> tuple[str, ...]:
        """The sites in roster order."""
        return tuple(e.site_id for e in self.sites)


@dataclass(frozen=True)
class EncryptedShare:
    """One recipient's AES-GCM ciphertext of the sender's two shares.

    Parameters
    ----------
    nonce : str
        Base64 12-byte GCM nonce.
    ciphertext : str
        Base64 ciphertext with its 16-byte tag.
    """

    nonce: str
    ciphertext: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object."""
        return {"ciphertext": self.ciphertext, "nonce": self.nonce}


def _encrypted_shares(value: Any) -> dict[str, EncryptedShare]:
    if not isinstance(value, dict) or not value:
        raise ValueError("an object mapping recipient ids to {nonce, ciphertext}")
    out: dict[str, EncryptedShare] = {}
    for recipient, item in sorted(value.items()):
        if not isinstance(item, dict) or set(item) != {"nonce", "ciphertext"}:
            raise ValueError("an object mapping recipient ids to {nonce, ciphertext}")
        out[_id(recipient)] = EncryptedShare(
            nonce=_b64(item["nonce"], 12), ciphertext=_b64(item["ciphertext"])
        )
    return out


@dataclass(frozen=True)
class SharesMessage(SecAggDocument):
    """Step 2 (site): the sender's Shamir shares, each encrypted to its recipient.

    Parameters
    ----------
    roster_sha256 : str
        The roster this run follows.
    shares : dict of str to EncryptedShare
        Recipient id -> ciphertext, for every other roster site (the sender keeps its own share).
    """

    KIND: ClassVar[str] = "shares"
    _FIELD_CHECKS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "roster_sha256": _hex64,
        "shares": _encrypted_shares,
    }
    roster_sha256: str = ""
    shares: Mapping[str, EncryptedShare] | None = None


@dataclass(frozen=True)
class MaskedInputHeader(SecAggDocument):
    """Step 3 (site): header of the masked input file.

    Parameters
    ----------
    roster_sha256 : str
        The roster this run follows.
    peers : tuple of str
        The sites whose shares the sender received and masked with (U2, sender included).
    self_mask_commitment : str
        SHA-256 of the sender's self-mask seed (with a domain prefix): the coordinator checks the
        seed it rebuilds from shares against it, so a wrong share cannot go unnoticed.
    payload_sha256 : str
        :func:`ecgdig.federated.files.payload_sha256` of the ``uint32`` tensors.
    """

    KIND: ClassVar[str] = "masked-input"
    _FIELD_CHECKS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "roster_sha256": _hex64,
        "peers": _ids,
        "self_mask_commitment": _hex64,
        "payload_sha256": _hex64,
    }
    roster_sha256: str = ""
    peers: tuple[str, ...] = ()
    self_mask_commitment: str = ""
    payload_sha256: str = ""


@dataclass(frozen=True)
class UnmaskRequest(SecAggDocument):
    """The coordinator's call for step 4: which sites shared, and whose masked input arrived.

    Parameters
    ----------
    roster_sha256 : str
        The roster this run follows.
    shared : tuple of str
        U2: the sites whose shares were forwarded (the peers every masked input used).
    survivors : tuple of str
        U3: the sites whose masked input was accepted (a subset of ``shared``, at least ``t``).
    masked_sha256 : dict of str to str
        Survivor -> SHA-256 of its masked input file, binding the request to those exact files.
    """

    KIND: ClassVar[str] = "unmask-request"
    _FIELD_CHECKS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "roster_sha256": _hex64,
        "shared": _ids,
        "survivors": _ids,
        "masked_sha256": _hex_map,
    }
    roster_sha256: str = ""
    shared: tuple[str, ...] = ()
    survivors: tuple[str, ...] = ()
    masked_sha256: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Reveal(SecAggDocument):
    """Step 4 (site): shares revealed to the coordinator, never both kinds for one site.

    Parameters
    ----------
    roster_sha256 : str
        The roster this run follows.
    request_sha256 : str
        The unmask request answered.
    self_mask_shares : dict of str to str
        Survivor -> hex share of its self-mask seed.
    mask_key_shares : dict of str to str
        Dropped site (in U2, not in U3) -> hex share of its mask private key.
    """

    KIND: ClassVar[str] = "reveal"
    _FIELD_CHECKS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "roster_sha256": _hex64,
        "request_sha256": _hex64,
        "self_mask_shares": _share_map,
        "mask_key_shares": _share_map,
    }
    roster_sha256: str = ""
    request_sha256: str = ""
    self_mask_shares: Mapping[str, str] | None = None
    mask_key_shares: Mapping[str, str] | None = None


# --------------------------------------------------------------------------------------------------
# Signing, writing and reading


def sign_document(document: _Doc, private_key: Ed25519PrivateKey) -> _Doc:
    """Return ``document`` with its Ed25519 signature set (deterministic, RFC 8032).

    Parameters
    ----------
    document : SecAggDocument
        The unsigned document.
    private_key : Ed25519PrivateKey
        The signer's key (a site's, or the coordinator's).

    Returns
    -------
    SecAggDocument
        A signed copy.
    """
    signature = private_key.sign(document.signing_message())
    return replace(document, signature=base64.b64encode(signature).decode("ascii"))


def verify_document(document: SecAggDocument, public_key: bytes, path: Path | None, signer: str) -> None:
    """Check that ``document`` is signed by ``public_key``.

    Parameters
    ----------
    document : SecAggDocument
        A parsed document.
    public_key : bytes
        The expected signer's raw Ed25519 key.
    path : Path or None
        The file, for the message.
    signer : str
        Who should have signed, for the message (``"site 'x'"``, ``"the coordinator"``).

    Raises
    ------
    UpdateRejectedError
        Unsigned, or altered / signed by another key.
    """
    if document.signature is None:
        raise UpdateRejectedError(f"unsigned {document.KIND} file: the header has no signature", path)
    try:
        raw = base64.b64decode(document.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(raw, document.signing_message())
    except (binascii.Error, InvalidSignature, ValueError):
        raise UpdateRejectedError(
            f"bad signature: {document.KIND} file altered or not signed by {signer}'s registered key", path
        ) from None


def document_text(document: SecAggDocument) -> str:
    """Return the file text of a JSON document: canonical JSON and a newline."""
    return canonical_json(document.to_dict()) + "\n"


def document_sha256(document: SecAggDocument) -> str:
    """Return SHA-256 (hex) of the document's file text; later steps name earlier files by it.

    Parameters
    ----------
    document : SecAggDocument
        A signed document.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    return hashlib.sha256(document_text(document).encode("utf-8")).hexdigest()


def write_document(path: str | Path, document: SecAggDocument) -> None:
    """Write a JSON document atomically.

    Parameters
    ----------
    path : str or Path
        The output file.
    document : SecAggDocument
        The (signed) document.
    """
    atomic_write_bytes(path, document_text(document).encode("utf-8"))


def read_document(path: str | Path, kind: type[_Doc], *, max_bytes: int = MAX_DOCUMENT_BYTES) -> _Doc:
    """Read a JSON protocol file of the given kind (schema and canonical form; no signature check).

    Parameters
    ----------
    path : str or Path
        The file.
    kind : type
        The expected :class:`SecAggDocument` subclass.
    max_bytes : int, optional
        Size bound.

    Returns
    -------
    SecAggDocument
        The parsed document.

    Raises
    ------
    UpdateRejectedError
        Missing, too large, not JSON, another kind, a schema violation, or not canonical.
    """
    path = Path(path)
    if not path.is_file():
        raise UpdateRejectedError("file not found", path)
    if path.stat().st_size > max_bytes:
        raise UpdateRejectedError(f"file is over the {max_bytes}-byte limit", path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
        data = loads_strict(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UpdateRejectedError(
            f"not an {SECAGG_FORMAT} protocol file: invalid JSON ({exc})", path
        ) from None
    document = kind.from_dict(data, path)
    if document_text(document) != text:
        raise UpdateRejectedError(f"invalid {kind.KIND} file: not in canonical JSON form", path)
    return document


def masked_input_bytes(tensors: Mapping[str, NDArray[np.uint32]], header: MaskedInputHeader) -> bytes:
    """Serialize a masked input: ``uint32`` tensors plus the signed header in ``__metadata__``.

    Parameters
    ----------
    tensors : mapping of str to uint32 ndarray
        The masked, encoded update (same names and shapes as the model).
    header : MaskedInputHeader
        Its signed header (``payload_sha256`` must be that of ``tensors``).

    Returns
    -------
    bytes
        The safetensors file.
    """
    arrays = {name: np.ascontiguousarray(tensors[name], dtype=np.uint32) for name in sorted(tensors)}
    return safetensors.numpy.save(arrays, metadata={MASKED_INPUT_KEY: canonical_json(header.to_dict())})


@dataclass(frozen=True)
class MaskedInput:
    """A masked input file whose header and payload hash were checked.

    Parameters
    ----------
    path : Path
        The file.
    header : MaskedInputHeader
        Its header (signature still to be verified against the roster).
    tensors : dict of str to uint32 ndarray
        The masked values.
    file_sha256 : str
        SHA-256 of the file bytes.
    """

    path: Path
    header: MaskedInputHeader
    tensors: dict[str, NDArray[np.uint32]]
    file_sha256: str


def read_masked_input(
    path: str | Path, reference_shapes: Mapping[str, tuple[int, ...]], *, max_bytes: int = MAX_MASKED_BYTES
) -> MaskedInput:
    """Read a masked input file: its header, its ``uint32`` tensors and their payload hash.

    Parameters
    ----------
    path : str or Path
        The file.
    reference_shapes : mapping of str to tuple of int
        The model's tensor names and shapes; the file must hold exactly these, as ``U32``.
    max_bytes : int, optional
        Size bound.

    Returns
    -------
    MaskedInput
        The parsed file (the caller verifies the signature and binding).

    Raises
    ------
    UpdateRejectedError
        Missing, too large, not safetensors, no or extra metadata, an invalid header, the wrong
        tensors, or a payload altered after signing.
    """
    path = Path(path)
    if not path.is_file():
        raise UpdateRejectedError("file not found", path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UpdateRejectedError(f"file is {size} bytes, over the {max_bytes}-byte limit", path)
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8]) if len(data) >= 8 else (size,)
    if header_len > _MAX_SAFETENSORS_HEADER_BYTES or 8 + header_len > size:
        raise UpdateRejectedError("not a safetensors file: implausible header length", path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if set(metadata) != {MASKED_INPUT_KEY}:
                raise UpdateRejectedError(
                    f"not a masked input: __metadata__ must hold exactly {MASKED_INPUT_KEY!r}", path
                )
            header_text = metadata[MASKED_INPUT_KEY]
            names = sorted(handle.keys())
            if names != sorted(reference_shapes):
                raise UpdateRejectedError("tensor names differ from the global model's", path)
            tensors = {name: handle.get_tensor(name) for name in names}
    except UpdateRejectedError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise UpdateRejectedError(f"not a safetensors file ({type(exc).__name__}: {exc})", path) from None
    try:
        parsed = loads_strict(header_text)
    except ValueError as exc:
        raise UpdateRejectedError(f"invalid masked-input header ({exc})", path) from None
    header = MaskedInputHeader.from_dict(parsed, path)
    if canonical_json(header.to_dict()) != header_text:
        raise UpdateRejectedError("invalid masked-input file: header not in canonical JSON form", path)
    for name, array in tensors.items():
        if array.dtype != np.uint32 or tuple(array.shape) != tuple(reference_shapes[name]):
            raise UpdateRejectedError(
                f"tensor {name!r} is {array.dtype} {tuple(array.shape)}, expected uint32 "
                f"{tuple(reference_shapes[name])}",
                path,
            )
    if payload_sha256(tensors) != header.payload_sha256:
        raise UpdateRejectedError("payload SHA-256 mismatch: the tensors were altered after signing", path)
    return MaskedInput(
        path=path, header=header, tensors=tensors, file_sha256=hashlib.sha256(data).hexdigest()
    )
