from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import safetensors.numpy

from ecgdig.errors import ModelFileError, UpdateRejectedError
from ecgdig.federated.files import (
    HEADER_KEY,
    ZERO_SHA256,
    FileHeader,
    canonical_json,
    payload_sha256,
    read_file_info,
    read_plain_tensors,
    read_tensors,
    verify_signature,
    write_signed_tensors,
)
from ecgdig.federated.keys import SiteKey

TENSORS = {"b": np.array([1.0, -2.0], np.float32), "a.w": np.arange(6, dtype=np.float32).reshape(2, 3)}


def write(path: Path, key: SiteKey | None, **overrides: object) -> FileHeader:
    fields: dict[str, object] = {
        "kind": "update",
        "federation_id": "fed",
        "round": 3,
        "site_id": "site-a",
        "base_sha256": "ab" * 32,
        "num_examples": 12,
        "clip_norm": 1.5,
        "private_key": None if key is None else key.private_key,
    }
    fields.update(overrides)
    return write_signed_tensors(path, TENSORS, **fields)  # type: ignore[arg-type]


def test_canonical_json_is_sorted_compact_and_stable() -> None:
    text = canonical_json({"z": 1, "a": {"y": 1.5e-05, "b": [True, None]}})
    assert text == '{"a":{"b":[true,null],"y":1.5e-05},"z":1}'
    assert canonical_json(json.loads(text)) == text
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_payload_hash_binds_names_shapes_and_bytes_not_order() -> None:
    base = payload_sha256(TENSORS)
    assert base == payload_sha256(dict(reversed(list(TENSORS.items()))))
    assert base != payload_sha256({**TENSORS, "b": np.array([1.0, -2.5], np.float32)})
    assert base != payload_sha256({"b": TENSORS["b"], "a.v": TENSORS["a.w"]})
    assert base != payload_sha256({"b": TENSORS["b"], "a.w": TENSORS["a.w"].reshape(3, 2)})


def test_signed_file_round_trips_and_verifies(tmp_path: Path) -> None:
    # Prepare
    key = SiteKey.generate("site-a")
    path = tmp_path / "u.safetensors"

    # Execute
    header = write(path, key)
    info = read_file_info(path)
    tensors = read_tensors(info)

    # Assert
    assert info.header == header
    assert info.header_text == header.to_json()
    assert verify_signature(info.header, key.public_key)
    assert not verify_signature(info.header, SiteKey.generate("site-a").public_key)
    assert set(tensors) == set(TENSORS)
    for name in TENSORS:
        np.testing.assert_array_equal(tensors[name], TENSORS[name])
    stored = json.loads(info.header_text)
    assert sorted(stored) == [
        "base_sha256",
        "clip_norm",
        "encoding",
        "federation_id",
        "format",
        "kind",
        "num_examples",
        "payload_sha256",
        "round",
        "signature",
        "site_id",
        "version",
    ]


def test_writing_is_deterministic(tmp_path: Path) -> None:
    key = SiteKey.generate("site-a")
    write(tmp_path / "1.safetensors", key)
    write(tmp_path / "2.safetensors", key)
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()


def test_header_schema_rejects_bad_fields() -> None:
    good = FileHeader("model", "fed", 0, "coordinator", ZERO_SHA256, 0, 1.0, "cd" * 32)
    assert FileHeader.from_json(good.to_json()) == good
    cases = {
        "unknown field": {**good.to_dict(), "extra": 1},
        "missing field": {k: v for k, v in good.to_dict().items() if k != "round"},
        "kind must be": {**good.to_dict(), "kind": "weights"},
        "round must be": {**good.to_dict(), "round": -1},
        "clip_norm must be": {**good.to_dict(), "clip_norm": 1},
        "payload_sha256 must be": {**good.to_dict(), "payload_sha256": "xyz"},
        "site_id must be": {**good.to_dict(), "site_id": "../etc/passwd"},
        "unsupported format version": {**good.to_dict(), "version": 2},
    }
    for reason, data in cases.items():
        with pytest.raises(UpdateRejectedError, match=reason):
            FileHeader.from_json(canonical_json(data))
    with pytest.raises(UpdateRejectedError, match="canonical"):
        FileHeader.from_json(json.dumps(good.to_dict()))
    with pytest.raises(UpdateRejectedError, match="duplicate key"):
        FileHeader.from_json(good.to_json()[:-1] + ',"round":1}')


def test_pickle_and_garbage_files_are_not_safetensors(tmp_path: Path) -> None:
    # Prepare
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")

    # Execute / Assert
    for path in (pickled, short):
        with pytest.raises(UpdateRejectedError, match="not a safetensors file") as err:
            read_file_info(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_plain_safetensors_without_protocol_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file(TENSORS, str(path))
    with pytest.raises(UpdateRejectedError, match="not an ecgdig protocol file"):
        read_file_info(path)


def test_extra_metadata_and_size_bound_are_rejected(tmp_path: Path) -> None:
    # Prepare: a valid header plus a smuggled, unsigned metadata entry.
    key = SiteKey.generate("site-a")
    header = write(tmp_path / "ok.safetensors", key)
    smuggled = tmp_path / "smuggled.safetensors"
    safetensors.numpy.save_file(TENSORS, str(smuggled), metadata={HEADER_KEY: header.to_json(), "note": "x"})

    # Execute / Assert
    with pytest.raises(UpdateRejectedError, match="unexpected metadata key"):
        read_file_info(smuggled)
    with pytest.raises(UpdateRejectedError, match="over the 100-byte limit"):
        read_file_info(tmp_path / "ok.safetensors", max_bytes=100)


def test_header_length_beyond_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(UpdateRejectedError, match="header length"):
        read_file_info(path)


def test_tensor_bytes_altered_after_signing_fail_the_payload_hash(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "u.safetensors"
    write(path, SiteKey.generate("site-a"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))

    # Execute / Assert
    with pytest.raises(UpdateRejectedError, match="payload SHA-256 mismatch"):
        read_tensors(read_file_info(path))


def test_writer_refuses_non_float32_and_bad_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="float32"):
        write_signed_tensors(
            tmp_path / "x.safetensors",
            cast(Any, {"w": np.zeros(2, np.float64)}),
            kind="update",
            federation_id="fed",
            round=0,
            site_id="s",
            base_sha256=ZERO_SHA256,
            num_examples=1,
            clip_norm=1.0,
            private_key=None,
        )
    with pytest.raises(ValueError, match="federation_id"):
        write(tmp_path / "y.safetensors", None, federation_id="bad id")
    assert not (tmp_path / "y.safetensors").exists()


def test_plain_model_files_are_read_as_float32(tmp_path: Path) -> None:
    # Prepare
    good = tmp_path / "init.safetensors"
    safetensors.numpy.save_file(
        {"w": np.array([1.5, 2.0], np.float64), "b": np.zeros(1, np.float16)}, str(good)
    )
    ints = tmp_path / "ints.safetensors"
    safetensors.numpy.save_file({"w": np.array([1, 2], np.int64)}, str(ints))

    # Execute
    tensors = read_plain_tensors(good)

    # Assert
    assert list(tensors) == ["b", "w"] and all(t.dtype == np.float32 for t in tensors.values())
    np.testing.assert_array_equal(tensors["w"], np.array([1.5, 2.0], np.float32))
    with pytest.raises(ModelFileError, match="expected floating point"):
        read_plain_tensors(ints)
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        (tmp_path / "x.pt").write_bytes(pickle.dumps([1.0]))
        read_plain_tensors(tmp_path / "x.pt")
