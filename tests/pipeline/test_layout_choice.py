"""Layouts recognised without --layout: strip counts, lead orders, rhythm leads, ruled lines."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml

from ecgdig.errors import ConfigError
from ecgdig.layouts import available_layouts, layouts_by_strip_count, load_layout
from ecgdig.metrics import score_record
from ecgdig.pipeline.digitize import vectorize_probability
from ecgdig.pipeline.layout import find_rows
from ecgdig.pipeline.segment import erase_ruled_lines
from ecgdig.render import RenderSettings, render_page
from ecgdig.types import EcgRecord


def _limb_consistent(record: EcgRecord) -> EcgRecord:
    """The synthetic record with limb leads derived from I and II, as real limb leads are."""
    sig = record.signal_mv.copy()
    i, ii = sig[:, 0], sig[:, 1]
    iii = ii - i
    sig[:, 2], sig[:, 3], sig[:, 4], sig[:, 5] = iii, -(i + ii) / 2, (i - iii) / 2, (ii + iii) / 2
    return replace(record, signal_mv=sig)


def _mean_snr(record: EcgRecord, reference: EcgRecord) -> float:
    return float(np.nanmean([s.snr_db for s in score_record(record, reference)]))


def test_strip_counts_come_from_the_template_files() -> None:
    by_count = layouts_by_strip_count()
    listed = sorted(name for names in by_count.values() for name in names)
    assert listed == available_layouts()
    assert all(load_layout(names[0]).guess_rank == 0 for names in by_count.values())
    assert by_count[13] == ("12x1+1", "eik-12x1+1")


def test_restarting_columns_show_the_record_from_time_zero() -> None:
    panels = {p.lead: p for p in load_layout("eik-6x2+1").panels()}
    assert panels["V4"].time_window_s(10.0) == (5.0, 10.0)  # where it sits on the strip
    assert panels["V4"].record_window_s(10.0) == (0.0, 5.0)  # what it shows
    sequential = {p.lead: p for p in load_layout("6x2+1").panels()}
    assert sequential["V1"].record_window_s(10.0) == (5.0, 10.0)


@pytest.mark.parametrize(
    ("key", "value"), [("column_times", "shuffled"), ("guess_rank", -1), ("guess_rank", "first")]
)
def test_bad_template_keys_are_refused(tmp_path, key: str, value: object) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "rows": [["I", "II"]], key: value}))
    with pytest.raises(ConfigError, match=key):
        load_layout(path)


@pytest.mark.parametrize("printed", ["12x1+1", "eik-12x1+1", "6x2+1", "eik-6x2+1"])
def test_thirteen_and_seven_strip_pages_are_read_in_the_order_printed(record, printed: str) -> None:
    # Prepare: a page in a cart's or ecg-image-kit's lead order; the digitizer is not told which.
    # Twelve rows crowd the page, so complexes of 1-2 mV run into the neighbouring strips.
    consistent = _limb_consistent(record)
    consistent = replace(consistent, signal_mv=0.5 * consistent.signal_mv)
    page = render_page(consistent, RenderSettings(dpi=200, layout=printed, calibration_pulse=True), rng=0)

    # Execute
    read = vectorize_probability((page.trace_mask > 0).astype(np.float32), page.px_per_mm)

    # Assert: the printed layout, and leads that match the page's truth.
    assert read.layout.template_name == printed
    assert _mean_snr(read.record, page.reference) > 14


def test_a_rhythm_strip_is_named_after_the_lead_it_repeats(record) -> None:
    # Prepare: a 3x4 block with a V1 rhythm strip, as ecg-image-kit and some carts print.
    page = render_page(record, RenderSettings(dpi=200, layout="3x4+1", rhythm_leads=("V1",)), rng=0)

    # Execute
    read = vectorize_probability((page.trace_mask > 0).astype(np.float32), page.px_per_mm)

    # Assert: V1 over the whole 10 s, lead II only over its quarter, as the page shows them.
    assert read.layout.template_name == "3x4+1 (rhythm V1)"
    shown = np.isfinite(read.record.signal_mv).mean(axis=0)
    names = list(read.record.lead_names)
    assert shown[names.index("V1")] > 0.95
    assert shown[names.index("II")] < 0.3
    assert any("rhythm strip read as V1" in w for w in read.warnings)
    assert _mean_snr(read.record, page.reference) > 15


def test_a_lead_ii_rhythm_strip_keeps_its_name(record) -> None:
    page = render_page(record, RenderSettings(dpi=200, layout="3x4+1"), rng=0)
    read = vectorize_probability((page.trace_mask > 0).astype(np.float32), page.px_per_mm)
    assert read.layout.template_name == "3x4+1"


def test_a_frame_round_the_page_is_neither_a_strip_nor_part_of_one(record) -> None:
    # Prepare: the black frame ecg-image-kit draws round its pages, read as trace by a segmenter.
    page = render_page(record, RenderSettings(dpi=200, layout="3x4+1"), rng=0)
    probability = (page.trace_mask > 0).astype(np.float32)
    framed = probability.copy()
    framed[[40, -40], 40:-40] = 1.0
    framed[40:-40, [40, -40]] = 1.0

    # Execute
    erased = erase_ruled_lines(framed, page.px_per_mm)
    read = vectorize_probability(framed, page.px_per_mm)

    # Assert: the frame is gone, the trace is kept, the four strips are the page's.
    assert erased[40, 500] == 0.0 and erased[500, 40] == 0.0
    assert np.count_nonzero(erased) >= 0.98 * np.count_nonzero(probability)
    assert len(find_rows(erased, page.px_per_mm)) == 4
    assert read.layout.template_name == "3x4+1"
    assert _mean_snr(read.record, page.reference) > 15
