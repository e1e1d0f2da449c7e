from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecgdig.errors import UpdateRejectedError
from ecgdig.federated.coordinator import GLOBAL_FILE, load_round_info, make_update
from ecgdig.federated.files import write_signed_tensors
from ecgdig.federated.keys import SiteKey, load_registry
from ecgdig.federated.validate import validate_model, validate_update

SHAPES = {"conv.weight": (2, 3), "conv.bias": (3,)}  # the conftest federation's model
Federation = Any  # conftest.Federation (fixtures are not importable as a module)


def small_delta(scale: float = 0.1) -> dict[str, np.ndarray]:
    return {name: np.full(shape, scale, np.float32) for name, shape in SHAPES.items()}


def raw_update(
    fed: Federation,
    path: Path,
    key: SiteKey | None,
    *,
    site_id: str = "site-a",
    tensors: dict[str, np.ndarray] | None = None,
    **overrides: Any,
) -> Path:
    """Write an update file with chosen header fields, bypassing make_update's safeguards."""
    info = load_round_info(fed.round_dir(0))
    fields: dict[str, Any] = {
        "kind": "update",
        "federation_id": "fed-test",
        "round": 0,
        "site_id": site_id,
        "base_sha256": info.global_sha256,
        "num_examples": 10,
        "clip_norm": fed.plan.clip_norm,
        "private_key": None if key is None else key.private_key,
    }
    fields.update(overrides)
    write_signed_tensors(path, small_delta() if tensors is None else tensors, **fields)
    return path


def edit_header(path: Path, old: str, new: str) -> None:
    """Change the stored header text in place (same length), keeping the old signature."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n].decode()
    assert len(old) == len(new) and old in header
    path.write_bytes(data[:8] + header.replace(old, new).encode() + data[8 + n :])


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _tampered_payload(fed: Federation, path: Path) -> Path:
    raw_update(fed, path, fed.sites["site-a"])
    flip_last_byte(path)
    return path


def _tampered_header(fed: Federation, path: Path) -> Path:
    raw_update(fed, path, fed.sites["site-a"])
    edit_header(path, '\\"num_examples\\":10', '\\"num_examples\\":99')
    return path


BAD_UPDATES: dict[str, tuple[Callable[[Federation, Path], Path], str]] = {
    "unsigned": (lambda f, p: raw_update(f, p, None), "unsigned update"),
    "tampered-payload": (_tampered_payload, "payload SHA-256 mismatch"),
    "tampered-header": (_tampered_header, "bad signature"),
    "signed-by-other-site": (
        lambda f, p: raw_update(f, p, f.sites["site-b"], site_id="site-a"),
        "bad signature",
    ),
    "unknown-site": (lambda f, p: raw_update(f, p, f.outsider, site_id="site-x"), "unknown site 'site-x'"),
    "replayed-round": (lambda f, p: raw_update(f, p, f.sites["site-a"], round=1), "expected round 0"),
    "wrong-base": (lambda f, p: raw_update(f, p, f.sites["site-a"], base_sha256="ef" * 32), "base model"),
    "other-federation": (
        lambda f, p: raw_update(f, p, f.sites["site-a"], federation_id="fed-other"),
        "federation 'fed-other'",
    ),
    "other-clip-norm": (lambda f, p: raw_update(f, p, f.sites["site-a"], clip_norm=99.0), "clip norm 99.0"),
    "model-not-update": (
        lambda f, p: raw_update(f, p, f.sites["site-a"], kind="model"),
        "expected a update file",
    ),
    "nan": (
        lambda f, p: raw_update(
            f,
            p,
            f.sites["site-a"],
            tensors={**small_delta(), "conv.bias": np.array([0.0, np.nan, 0.0], np.float32)},
        ),
        "contains NaN or Inf",
    ),
    "inf": (
        lambda f, p: raw_update(
            f,
            p,
            f.sites["site-a"],
            tensors={**small_delta(), "conv.bias": np.array([0.0, np.inf, 0.0], np.float32)},
        ),
        "contains NaN or Inf",
    ),
    "wrong-shape": (
        lambda f, p: raw_update(
            f, p, f.sites["site-a"], tensors={**small_delta(), "conv.bias": np.zeros(4, np.float32)}
        ),
        "shape (4,), expected (3,)",
    ),
    "missing-tensor": (
        lambda f, p: raw_update(f, p, f.sites["site-a"], tensors={"conv.bias": np.zeros(3, np.float32)}),
        "missing tensors: 'conv.weight'",
    ),
    "extra-tensor": (
        lambda f, p: raw_update(
            f, p, f.sites["site-a"], tensors={**small_delta(), "head.w": np.zeros(1, np.float32)}
        ),
        "unexpected tensors: 'head.w'",
    ),
    "over-norm": (
        lambda f, p: raw_update(f, p, f.sites["site-a"], tensors=small_delta(5.0)),
        "exceeds the clip norm",
    ),
    "not-safetensors": (
        lambda f, p: (p.write_bytes(b"\x80\x04 this is a pickle"), p)[1],
        "not a safetensors file",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_UPDATES))
def test_each_bad_update_is_rejected_with_a_clear_one_line_reason(
    case: str, make_federation: Callable[..., Federation], tmp_path: Path
) -> None:
    # Prepare
    fed = make_federation(n_sites=3)
    build, reason = BAD_UPDATES[case]
    path = build(fed, tmp_path / f"{case}.safetensors")
    info = load_round_info(fed.round_dir(0))

    # Execute
    with pytest.raises(UpdateRejectedError) as err:
        validate_update(
            path,
            registry=load_registry(fed.root / "registry.json"),
            expected_round=0,
            expected_base_sha256=info.global_sha256,
            reference_shapes=SHAPES,
            clip_norm=fed.plan.clip_norm,
        )

    # Assert
    message = str(err.value)
    assert reason in message
    assert message.startswith(str(path)) and "\n" not in message


def test_make_update_output_passes_validation(
    make_federation: Callable[..., Federation], model0: dict[str, np.ndarray], tmp_path: Path
) -> None:
    # Prepare
    fed = make_federation(n_sites=3, clip_norm=1.0)
    local = {name: t + 2.0 for name, t in model0.items()}  # norm sqrt(9 * 4) = 6 > S = 1
    info = load_round_info(fed.round_dir(0))

    # Execute
    made = make_update(
        fed.round_dir(0) / GLOBAL_FILE,
        local,
        tmp_path / "u.safetensors",
        fed.sites["site-b"],
        plan=fed.plan,
        num_examples=40,
    )
    valid = validate_update(
        made.path,
        registry=load_registry(fed.root / "registry.json"),
        expected_round=0,
        expected_base_sha256=info.global_sha256,
        reference_shapes=SHAPES,
        clip_norm=1.0,
    )

    # Assert
    assert made.clipped and made.norm_before_clip == pytest.approx(6.0)
    assert valid.site_id == "site-b" and valid.header.num_examples == 40
    assert valid.l2_norm <= 1.0
    np.testing.assert_allclose(valid.tensors["conv.bias"], np.full(3, 2.0 / 6.0), rtol=1e-6)


def test_global_model_must_be_signed_by_the_coordinator(
    make_federation: Callable[..., Federation], model0: dict[str, np.ndarray]
) -> None:
    # Prepare: a 'global model' signed by a site key instead of the coordinator's.
    fed = make_federation(n_sites=3)
    forged = fed.root / "forged.safetensors"
    write_signed_tensors(
        forged,
        model0,
        kind="model",
        federation_id="fed-test",
        round=0,
        site_id="coordinator",
        base_sha256="0" * 64,
        num_examples=0,
        clip_norm=10.0,
        private_key=fed.sites["site-a"].private_key,
    )

    # Execute / Assert
    with pytest.raises(UpdateRejectedError, match="not signed by the coordinator"):
        validate_model(
            forged,
            federation_id="fed-test",
            coordinator_id="coordinator",
            coordinator_public_key=fed.coordinator.public_key,
        )
    with pytest.raises(UpdateRejectedError, match="not signed by the coordinator"):
        make_update(
            forged, model0, fed.root / "u.safetensors", fed.sites["site-a"], plan=fed.plan, num_examples=1
        )
    header, tensors = validate_model(
        fed.round_dir(0) / GLOBAL_FILE,
        federation_id="fed-test",
        coordinator_id="coordinator",
        coordinator_public_key=fed.coordinator.public_key,
        expected_round=0,
    )
    assert header.kind == "model" and set(tensors) == set(SHAPES)
