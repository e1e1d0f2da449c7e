from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from ecgdig.errors import ModelFileError
from ecgdig.model.files import HEADER_KEY, ModelHeader, load_model, read_model_header, save_model
from ecgdig.model.network import UnetArchitecture, build_network


def _saved(tmp_path: Path, arch: UnetArchitecture) -> tuple[Path, torch.nn.Module, ModelHeader]:
    model = build_network(arch, seed=4)
    header = ModelHeader(
        architecture=arch,
        px_per_mm=8.0,
        training={"profiles": ["scanner", "phone"], "records": 3},
        metrics={"val_dice": 0.5},
    )
    path = save_model(tmp_path / "m.safetensors", model, header)
    return path, model, header


def test_round_trip_gives_equal_tensors_header_and_outputs(tmp_path: Path, tiny: UnetArchitecture) -> None:
    path, model, header = _saved(tmp_path, tiny)

    loaded, back = load_model(path)

    assert back == header
    assert read_model_header(path) == header
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), loaded(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary files left


def test_loading_never_unpickles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny: UnetArchitecture
) -> None:
    path, _, _ = _saved(tmp_path, tiny)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    load_model(path)


def _rewrite(
    path: Path,
    edit_tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    edit_header: Callable[[dict[str, object]], None] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    header = json.loads(meta[HEADER_KEY])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    path.write_bytes(
        safetensors.torch.save(
            tensors, metadata=metadata if metadata is not None else {HEADER_KEY: json.dumps(header)}
        )
    )


def _pop_first(t: dict[str, torch.Tensor]) -> None:
    t.pop(sorted(t)[0])


def _add_extra(t: dict[str, torch.Tensor]) -> None:
    t["encoder.extra.weight"] = torch.zeros(3)


def _reshape(t: dict[str, torch.Tensor]) -> None:
    t["segmentation_head.0.bias"] = torch.zeros(2)


def _to_half(t: dict[str, torch.Tensor]) -> None:
    t["segmentation_head.0.bias"] = t["segmentation_head.0.bias"].half()


def _nan(t: dict[str, torch.Tensor]) -> None:
    t["segmentation_head.0.bias"] = torch.full_like(t["segmentation_head.0.bias"], float("nan"))


@pytest.mark.parametrize(
    ("tensors", "header", "metadata", "reason"),
    [
        (_pop_first, None, None, "missing tensor"),
        (_add_extra, None, None, "unexpected tensor"),
        (_reshape, None, None, "has shape \\[2\\], the architecture needs \\[1\\]"),
        (_to_half, None, None, "expected F32"),
        (_nan, None, None, "NaN or Inf"),
        (None, lambda h: h.update(format="something-else"), None, "unknown format 'something-else'"),
        (None, lambda h: h.update(version=2), None, "newer than this ecgdig reads"),
        (None, lambda h: h.pop("px_per_mm"), None, "lacks field\\(s\\) px_per_mm"),
        (None, lambda h: h.update(px_per_mm=-1), None, "px_per_mm must be a positive number"),
        (None, lambda h: h["architecture"].update(norm="batch"), None, "norm must be 'group' or 'none'"),
        (None, lambda h: h.update(classes=["trace", "lead"]), None, "2 class name\\(s\\) for 1 output"),
        (None, None, {}, "not an ecgdig model file"),
    ],
)
def test_bad_model_files_are_rejected_with_their_reason(
    tmp_path: Path,
    tiny: UnetArchitecture,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None,
    header: Callable[[dict[str, object]], None] | None,
    metadata: dict[str, str] | None,
    reason: str,
) -> None:
    path, _, _ = _saved(tmp_path, tiny)
    _rewrite(path, tensors, header, metadata)

    with pytest.raises(ModelFileError, match=reason) as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "shorter than 8 bytes"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "implausible header length"),
        (b"\x10\0\0\0\0\0\0\0" + b"not json at all!", "header is not JSON"),
    ],
)
def test_non_safetensors_files_are_rejected(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=f"not a safetensors file: {reason}"):
        load_model(path)


def test_missing_file_and_mismatched_header_on_save(tmp_path: Path, tiny: UnetArchitecture) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    other = build_network(
        UnetArchitecture(encoder_widths=(4, 8), decoder_channels=(8, 8), channels_per_group=4)
    )
    with pytest.raises(ValueError, match="does not match"):
        save_model(tmp_path / "x.safetensors", other, ModelHeader(architecture=tiny))
    assert not list(tmp_path.iterdir())
