"""Signed model and update files: safetensors tensors plus a canonical, signed JSON header.

A protocol file is an ordinary safetensors file whose ``__metadata__`` holds exactly one entry,
``"ecgdig.header"``: a canonical JSON object (sorted keys, no whitespace) describing the file and
carrying an Ed25519 signature of that header without the signature. The header binds the tensors
through ``payload_sha256``, so a valid signature authenticates every byte that matters.

Reading never unpickles anything: the safetensors JSON header is parsed here, the protocol header is
checked against its schema before any tensor is read, and tensors are then loaded with
:func:`safetensors.safe_open`. File sizes are bounded. Writing is atomic
(:func:`ecgdig.io.atomic.atomic_write_bytes`). The byte layout is specified in ``docs/formats.md``.

This module checks that a file is well formed and that its signature and payload hash agree; whether
it is the right file for a round (registry, round, base model, shapes, norm) is decided by
:mod:`ecgdig.federated.validate`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import safetensors.numpy
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from numpy.typing import NDArray
from safetensors import SafetensorError, safe_open

from ecgdig.errors import ModelFileError, UpdateRejectedError
from ecgdig.federated.strategies import Tensors
from ecgdig.io.atomic import atomic_write_bytes
from ecgdig.io.safetensors_header import read_safetensors_header
from ecgdig.io.strict_json import canonical_json, loads_strict, read_json_file

__all__ = [
    "ENCODINGS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "KINDS",
    "MAX_FILE_BYTES",
    "ZERO_SHA256",
    "FileHeader",
    "FileKind",
    "TensorFileInfo",
    "TensorSpec",
    "canonical_json",
    "decode_signature",
    "file_sha256",
    "is_valid_id",
    "loads_strict",
    "payload_sha256",
    "read_file_info",
    "read_json_file",
    "read_plain_tensors",
    "read_tensors",
    "sign_header",
    "signed_tensor_bytes",
    "signing_message",
    "verify_signature",
    "write_signed_tensors",
]

FORMAT_NAME = "ecgdig-fed"
FORMAT_VERSION = 1
HEADER_KEY = "ecgdig.header"
FileKind: TypeAlias = Literal["model", "update"]
KINDS: tuple[FileKind, ...] = ("model", "update")
ENCODINGS: tuple[str, ...] = ("float32",)
ZERO_SHA256 = "0" * 64
"""``base_sha256`` of the round-0 model, which has no base."""

MAX_FILE_BYTES = 2 * 1024**3
"""Default bound on a protocol file's size (2 GiB; a ResNet-34 U-Net is about 100 MB)."""
MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024**2
MAX_PROTOCOL_HEADER_CHARS = 4096

SIGNATURE_CONTEXT = b"ecgdig-fed signed header v1\x00"
"""Domain-separation prefix of every signed message, so a signature can never be replayed as the
signature of another kind of message made with the same key."""

_DTYPE_CODES: Mapping[str, str] = {"float32": "F32", "float64": "F64", "uint32": "U32", "int64": "I64"}
_ENCODING_DTYPE: Mapping[str, str] = {"float32": "F32"}
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_HEADER_FIELDS = frozenset(
    {
        "format",
        "version",
        "kind",
        "federation_id",
        "round",
        "site_id",
        "base_sha256",
        "num_examples",
        "clip_norm",
        "encoding",
        "payload_sha256",
        "signature",
    }
)


def is_valid_id(value: object) -> bool:
    """Return whether ``value`` is a valid federation or site id.

    Ids are 1-64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, so they are
    safe as file names.

    Parameters
    ----------
    value : object
        The candidate.

    Returns
    -------
    bool
        True for a valid id.

    Examples
    --------
    >>> is_valid_id("site-a"), is_valid_id("../etc")
    (True, False)
    """
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def payload_sha256(tensors: Mapping[str, NDArray[Any]]) -> str:
    """Return the SHA-256 of a tensor payload, independent of file layout and dict order.

    The digest runs over the tensor count, then for each tensor in the order of its name's UTF-8
    bytes: name, safetensors dtype code (``F32``...), rank, each dimension, and the raw
    little-endian C-order bytes; every string and byte string is prefixed by its length. Integers
    are unsigned 64-bit little-endian. See ``docs/formats.md``.

    Parameters
    ----------
    tensors : mapping of str to ndarray
        The tensors; dtypes float32, float64, uint32 or int64.

    Returns
    -------
    str
        64 lowercase hex digits.

    Raises
    ------
    ValueError
        An unsupported dtype.

    Examples
    --------
    >>> import numpy as np
    >>> a = payload_sha256({"w": np.zeros(2, np.float32), "b": np.ones(1, np.float32)})
    >>> a == payload_sha256({"b": np.ones(1, np.float32), "w": np.zeros(2, np.float32)})
    True
    """
    digest = hashlib.sha256()
    digest.update(struct.pack("<Q", len(tensors)))
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        array = np.asarray(tensors[name])
        code = _DTYPE_CODES.get(array.dtype.name)
        if code is None:
            raise ValueError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        for blob in (name.encode("utf-8"), code.encode("ascii")):
            digest.update(struct.pack("<Q", len(blob)))
            digest.update(blob)
        digest.update(struct.pack("<Q", array.ndim))
        for dim in array.shape:
            digest.update(struct.pack("<Q", dim))
        digest.update(struct.pack("<Q", data.nbytes))
        digest.update(data.tobytes())
    return digest.hexdigest()


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Return the SHA-256 of a file's bytes (for reports: which exact file was used).

    Parameters
    ----------
    path : str or Path
        The file.
    chunk_bytes : int, optional
        Read size.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileHeader:
    """The protocol header of a model or update file.

    Parameters
    ----------
    kind : {"model", "update"}
        A global model (written by the coordinator) or a site's update (a clipped delta).
    federation_id : str
        The federation the file belongs to.
    round : int
        For a model, the round it opens; for an update, the round of the global model it was
        trained from.
    site_id : str
        The signer: a site, or the coordinator for models.
    base_sha256 : str
        ``payload_sha256`` of the global model this file derives from (an update's starting model;
        a model's predecessor); :data:`ZERO_SHA256` for the round-0 model.
    num_examples : int
        Training examples behind an update (>= 1); for a model, the total behind it, or 0 when
        differential privacy is on (a count would leak participation).
    clip_norm : float
        The clip bound ``S`` of the federation (the L2 norm bound of every update).
    payload_sha256 : str
        :func:`payload_sha256` of the tensors.
    encoding : str, optional
        Tensor encoding; only ``"float32"`` for now (secure aggregation will add fixed point).
    signature : str or None, optional
        Base64 Ed25519 signature of :func:`signing_message`; None when unsigned.
    """

    kind: FileKind
    federation_id: str
    round: int
    site_id: str
    base_sha256: str
    num_examples: int
    clip_norm: float
    payload_sha256: str
    encoding: str = "float32"
    signature: str | None = None

    def to_dict(self, *, with_signature: bool = True) -> dict[str, Any]:
        """Return the header as the JSON object stored in the file.

        Parameters
        ----------
        with_signature : bool, optional
            Include ``signature`` (when set).

        Returns
        -------
        dict
            Field name -> value, with ``format`` and ``version``.
        """
        fields: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "federation_id": self.federation_id,
            "round": self.round,
            "site_id": self.site_id,
            "base_sha256": self.base_sha256,
            "num_examples": self.num_examples,
            "clip_norm": float(self.clip_norm),
            "encoding": self.encoding,
            "payload_sha256": self.payload_sha256,
        }
        if with_signature and self.signature is not None:
            fields["signature"] = self.signature
        return fields

    def to_json(self) -> str:
        """Return the canonical JSON text stored under :data:`HEADER_KEY`."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str, path: str | Path | None = None) -> FileHeader:
        """Parse and schema-check a header text.

        Parameters
        ----------
        text : str
            The value stored under :data:`HEADER_KEY`.
        path : str or Path, optional
            The file, for error messages.

        Returns
        -------
        FileHeader
            The header. Its signature is not verified here (see :func:`verify_signature`).

        Raises
        ------
        UpdateRejectedError
            Too long, not JSON, a missing, unknown or ill-typed field, an unsupported format or
            version, or a text that is not in canonical form.
        """
        if len(text) > MAX_PROTOCOL_HEADER_CHARS:
            raise UpdateRejectedError(
                f"invalid header: longer than {MAX_PROTOCOL_HEADER_CHARS} characters", path
            )
        try:
            data = loads_strict(text)
        except ValueError as exc:
            raise UpdateRejectedError(f"invalid header: not valid JSON ({exc})", path) from None
        if not isinstance(data, dict):
            raise UpdateRejectedError("invalid header: not a JSON object", path)
        if data.get("format") != FORMAT_NAME:
            raise UpdateRejectedError(
                f"invalid header: format is {data.get('format')!r}, expected {FORMAT_NAME!r}", path
            )
        if data.get("version") != FORMAT_VERSION or isinstance(data.get("version"), bool):
            raise UpdateRejectedError(
                f"unsupported format version {data.get('version')!r} (this ecgdig reads {FORMAT_VERSION})",
                path,
            )
        unknown = sorted(set(data) - _HEADER_FIELDS)
        if unknown:
            raise UpdateRejectedError(f"invalid header: unknown field(s) {', '.join(unknown)}", path)
        missing = sorted(_HEADER_FIELDS - {"signature"} - set(data))
        if missing:
            raise UpdateRejectedError(f"invalid header: missing field(s) {', '.join(missing)}", path)

        def bad(field_name: str, expected: str) -> UpdateRejectedError:
            return UpdateRejectedError(
                f"invalid header: {field_name} must be {expected}, got {data[field_name]!r}", path
            )

        if data["kind"] not in KINDS:
            raise bad("kind", " or ".join(repr(k) for k in KINDS))
        for name in ("federation_id", "site_id"):
            if not is_valid_id(data[name]):
                raise bad(name, "1-64 characters from A-Z a-z 0-9 . _ -")
        for name in ("round", "num_examples"):
            if not isinstance(data[name], int) or isinstance(data[name], bool) or data[name] < 0:
                raise bad(name, "an integer >= 0")
        for name in ("base_sha256", "payload_sha256"):
            if not isinstance(data[name], str) or _HEX64_RE.fullmatch(data[name]) is None:
                raise bad(name, "64 lowercase hex digits")
        clip = data["clip_norm"]
        if not isinstance(clip, float) or not math.isfinite(clip) or clip <= 0:
            raise bad("clip_norm", "a finite positive float")
        if data["encoding"] not in ENCODINGS:
            raise bad("encoding", " or ".join(repr(e) for e in ENCODINGS))
        signature = data.get("signature")
        if signature is not None and not isinstance(signature, str):
            raise bad("signature", "a base64 string")
        header = cls(
            kind=data["kind"],
            federation_id=data["federation_id"],
            round=data["round"],
            site_id=data["site_id"],
            base_sha256=data["base_sha256"],
            num_examples=data["num_examples"],
            clip_norm=clip,
            payload_sha256=data["payload_sha256"],
            encoding=data["encoding"],
            signature=signature,
        )
        if header.to_json() != text:
            raise UpdateRejectedError(
                "invalid header: not in canonical JSON form (sorted keys, no whitespace)", path
            )
        return header


def signing_message(header: FileHeader) -> bytes:
    """Return the bytes an Ed25519 signature covers: a context prefix + the canonical unsigned header.

    Parameters
    ----------
    header : FileHeader
        The header (its ``signature`` field is ignored).

    Returns
    -------
    bytes
        :data:`SIGNATURE_CONTEXT` followed by the UTF-8 canonical JSON of the header without
        ``signature``.
    """
    return SIGNATURE_CONTEXT + canonical_json(header.to_dict(with_signature=False)).encode("utf-8")


def sign_header(header: FileHeader, private_key: Ed25519PrivateKey) -> FileHeader:
    """Return ``header`` with its Ed25519 signature set (deterministic, RFC 8032).

    Parameters
    ----------
    header : FileHeader
        The header to sign.
    private_key : Ed25519PrivateKey
        The signer's key.

    Returns
    -------
    FileHeader
        A copy with ``signature`` filled in.
    """
    signature = private_key.sign(signing_message(header))
    return replace(header, signature=base64.b64encode(signature).decode("ascii"))


def decode_signature(header: FileHeader) -> bytes | None:
    """Return the raw 64-byte signature, or None if the header is unsigned or the field malformed."""
    if not header.signature:
        return None
    try:
        raw = base64.b64decode(header.signature, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


def verify_signature(header: FileHeader, public_key: bytes) -> bool:
    """Return whether ``header`` carries a valid signature by ``public_key``.

    Parameters
    ----------
    header : FileHeader
        A parsed header.
    public_key : bytes
        The signer's raw 32-byte Ed25519 public key.

    Returns
    -------
    bool
        False if unsigned, malformed or not verifying.
    """
    signature = decode_signature(header)
    if signature is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signing_message(header))
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_tensor_bytes(
    tensors: Mapping[str, NDArray[np.float32]],
    *,
    kind: FileKind,
    federation_id: str,
    round: int,
    site_id: str,
    base_sha256: str,
    num_examples: int,
    clip_norm: float,
    private_key: Ed25519PrivateKey | None,
) -> tuple[bytes, FileHeader]:
    """Serialize tensors as a protocol file in memory: canonical header, signature, safetensors bytes.

    The bytes are exactly what :func:`write_signed_tensors` writes, so a message transport (Flower)
    can carry the same signed bytes as a file transport.

    Parameters
    ----------
    tensors : mapping of str to float32 ndarray
        The payload. Values are written as given (not checked for NaN: that is the reader's job).
    kind, federation_id, round, site_id, base_sha256, num_examples, clip_norm
        Header fields, see :class:`FileHeader`.
    private_key : Ed25519PrivateKey or None
        The signer's key; None gives an unsigned file (only useful to test rejection).

    Returns
    -------
    data : bytes
        The complete safetensors file.
    header : FileHeader
        The header it carries.

    Raises
    ------
    ValueError
        Empty payload, a non-float32 tensor, or a header field out of its schema.
    """
    if not tensors:
        raise ValueError("a protocol file needs at least one tensor")
    arrays: dict[str, NDArray[np.float32]] = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype != np.float32:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}; protocol files hold float32")
        arrays[name] = np.ascontiguousarray(array)
    header = FileHeader(
        kind=kind,
        federation_id=federation_id,
        round=round,
        site_id=site_id,
        base_sha256=base_sha256,
        num_examples=num_examples,
        clip_norm=float(clip_norm),
        payload_sha256=payload_sha256(arrays),
    )
    try:
        FileHeader.from_json(header.to_json())
    except UpdateRejectedError as exc:
        raise ValueError(exc.reason) from None
    if private_key is not None:
        header = sign_header(header, private_key)
    return safetensors.numpy.save(arrays, metadata={HEADER_KEY: header.to_json()}), header


def write_signed_tensors(
    path: str | Path,
    tensors: Mapping[str, NDArray[np.float32]],
    *,
    kind: FileKind,
    federation_id: str,
    round: int,
    site_id: str,
    base_sha256: str,
    num_examples: int,
    clip_norm: float,
    private_key: Ed25519PrivateKey | None,
) -> FileHeader:
    """Write a protocol file atomically (see :func:`signed_tensor_bytes` for the parameters).

    Parameters
    ----------
    path : str or Path
        Output file (conventionally ``*.safetensors``); replaced atomically, untouched on error.
    tensors : mapping of str to float32 ndarray
        The payload.
    kind, federation_id, round, site_id, base_sha256, num_examples, clip_norm, private_key
        As for :func:`signed_tensor_bytes`.

    Returns
    -------
    FileHeader
        The header written.

    Raises
    ------
    ValueError
        Empty payload, a non-float32 tensor, or a header field out of its schema.
    """
    data, header = signed_tensor_bytes(
        tensors,
        kind=kind,
        federation_id=federation_id,
        round=round,
        site_id=site_id,
        base_sha256=base_sha256,
        num_examples=num_examples,
        clip_norm=clip_norm,
        private_key=private_key,
    )
    atomic_write_bytes(path, data)
    return header


@dataclass(frozen=True)
class TensorSpec:
    """Name-independent description of one stored tensor: safetensors dtype code and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TensorFileInfo:
    """What :func:`read_file_info` learns without reading any tensor data.

    Parameters
    ----------
    path : Path
        The file.
    header : FileHeader
        The parsed, schema-checked protocol header (signature not yet verified).
    header_text : str
        The header exactly as stored.
    tensors : dict of str to TensorSpec
        Tensor name -> dtype and shape, from the safetensors header.
    size_bytes : int
        File size.
    """

    path: Path
    header: FileHeader
    header_text: str
    tensors: dict[str, TensorSpec]
    size_bytes: int


def read_file_info(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> TensorFileInfo:
    """Read and check a protocol file's headers, touching no tensor data.

    Parameters
    ----------
    path : str or Path
        The file.
    max_bytes : int, optional
        Size bound (default :data:`MAX_FILE_BYTES`).

    Returns
    -------
    TensorFileInfo
        The protocol header and the tensor inventory.

    Raises
    ------
    UpdateRejectedError
        Missing, too large, not a safetensors file, no or extra metadata, or an invalid protocol
        header.
    """
    path = Path(path)
    st_header, metadata, size = read_safetensors_header(
        path, max_bytes=max_bytes, max_header_bytes=MAX_SAFETENSORS_HEADER_BYTES, error=UpdateRejectedError
    )
    if not isinstance(metadata, dict) or HEADER_KEY not in metadata:
        raise UpdateRejectedError(f"not an ecgdig protocol file: no {HEADER_KEY!r} metadata", path)
    if set(metadata) != {HEADER_KEY}:
        extra = sorted(set(metadata) - {HEADER_KEY})
        raise UpdateRejectedError(f"invalid header: unexpected metadata key(s) {', '.join(extra)}", path)
    header_text = metadata[HEADER_KEY]
    if not isinstance(header_text, str):
        raise UpdateRejectedError(f"invalid header: {HEADER_KEY!r} is not a string", path)
    header = FileHeader.from_json(header_text, path)
    specs: dict[str, TensorSpec] = {}
    for name, entry in st_header.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("dtype"), str)
            or not isinstance(entry.get("shape"), list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
        ):
            raise UpdateRejectedError(f"not a safetensors file: malformed entry for tensor {name!r}", path)
        specs[name] = TensorSpec(dtype=entry["dtype"], shape=tuple(entry["shape"]))
    return TensorFileInfo(path=path, header=header, header_text=header_text, tensors=specs, size_bytes=size)


def read_tensors(info: TensorFileInfo) -> Tensors:
    """Load the tensors of a file whose headers :func:`read_file_info` has checked.

    Uses :func:`safetensors.safe_open` (no pickle). Checks that the file still holds the header that
    was checked and the announced tensors, and that the payload matches ``payload_sha256``.

    Parameters
    ----------
    info : TensorFileInfo
        From :func:`read_file_info`.

    Returns
    -------
    dict of str to float32 ndarray
        The tensors, in sorted name order.

    Raises
    ------
    UpdateRejectedError
        The safetensors library rejects the file, the file changed since its header was read, a
        tensor is not of the header's encoding, or the payload hash does not match (the tensors
        were altered after signing).
    """
    path = info.path
    expected_code = _ENCODING_DTYPE[info.header.encoding]
    wrong = sorted(name for name, spec in info.tensors.items() if spec.dtype != expected_code)
    if wrong:
        raise UpdateRejectedError(
            f"tensor {wrong[0]!r} has dtype {info.tensors[wrong[0]].dtype}, expected {expected_code} "
            f"(encoding {info.header.encoding})",
            path,
        )
    tensors: Tensors = {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            if metadata.get(HEADER_KEY) != info.header_text or names != set(info.tensors):
                raise UpdateRejectedError("file changed while it was being read", path)
            for name in sorted(names):
                array = handle.get_tensor(name)
                if array.dtype != np.float32 or tuple(array.shape) != info.tensors[name].shape:
                    raise UpdateRejectedError(f"tensor {name!r} does not match its safetensors header", path)
                tensors[name] = array
    except UpdateRejectedError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise UpdateRejectedError(
            f"not a valid safetensors file ({type(exc).__name__}: {exc})", path
        ) from None
    if payload_sha256(tensors) != info.header.payload_sha256:
        raise UpdateRejectedError("payload SHA-256 mismatch: the tensors were altered after signing", path)
    return tensors


def read_plain_tensors(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> Tensors:
    """Read an ordinary safetensors model file (no protocol header), e.g. the initial model.

    Parameters
    ----------
    path : str or Path
        A safetensors file of floating-point tensors (F16, F32 or F64); metadata is ignored.
    max_bytes : int, optional
        Size bound (default 2 GiB).

    Returns
    -------
    dict of str to float32 ndarray
        The tensors, cast to float32, in sorted name order.

    Raises
    ------
    ModelFileError
        Missing, too large, not safetensors, empty, or a non-float or non-finite tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("model file not found", path)
    if path.stat().st_size > max_bytes:
        raise ModelFileError(f"model file is over the {max_bytes}-byte limit", path)
    tensors: Tensors = {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            for name in sorted(handle.keys()):
                array = handle.get_tensor(name)
                if array.dtype not in (np.float16, np.float32, np.float64):
                    raise ModelFileError(f"tensor {name!r} is {array.dtype}, expected floating point", path)
                if not np.isfinite(array).all():
                    raise ModelFileError(f"tensor {name!r} contains NaN or Inf", path)
                tensors[name] = np.ascontiguousarray(array, dtype=np.float32)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ModelFileError(f"not a readable safetensors file ({type(exc).__name__}: {exc})", path) from None
    if not tensors:
        raise ModelFileError("model file holds no tensors", path)
    return tensors
