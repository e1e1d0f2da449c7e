from __future__ import annotations

from pathlib import Path

from PIL import Image

from ecgdig.pipeline.digitize import collect_inputs, digitize_files, output_paths, record_name_for


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (300, 300), "white").save(path)
    return path


def test_folders_skip_truth_and_overlay_images_beside_their_page(tmp_path: Path) -> None:
    page = _png(tmp_path / "a" / "rec-0.png")
    _png(tmp_path / "a" / "rec-0_mask.png")
    _png(tmp_path / "a" / "rec-0_labels.png")
    _png(tmp_path / "a" / "rec-0_overlay.png")
    lone = _png(tmp_path / "a" / "sub" / "scan_mask.png")  # no page beside it: a page after all

    found = collect_inputs([str(tmp_path / "a")])

    assert found == [page, lone]


def test_stdin_list_and_duplicates(tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png")
    found = collect_inputs([str(a), "-"], stdin_lines=[f"{a}\n", "\n", f"{tmp_path / 'b.png'}\n"])
    assert found == [a, tmp_path / "b.png"]


def test_record_names_are_wfdb_safe() -> None:
    assert record_name_for(Path("scan 01 (copy).jpeg")) == "scan_01_copy"
    assert output_paths(Path("x/p.q.png"), Path("o"))["hea"] == Path("o/p_q.hea")


def test_clashing_record_names_fail_instead_of_overwriting(tmp_path: Path) -> None:
    # Two inputs that map to the same record name: the second is refused, the first is processed.
    first = tmp_path / "one" / "page.png"
    second = tmp_path / "two" / "page.png"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"")  # empty: fails fast in read_image, which is all this test needs
    outcomes = digitize_files([first, second], tmp_path / "out")

    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert "file is empty" in outcomes[0].message
    assert "already used by" in outcomes[1].message and str(first) in outcomes[1].message
