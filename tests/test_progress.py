"""hovernet.progress: the shared progress display (plain lines without a terminal, quiet mode)."""

from __future__ import annotations

import io

from hovernet.progress import Progress, format_fields


def test_plain_stream_gets_one_line_per_log_and_a_final_summary():
    out = io.StringIO()
    with Progress(3, "infer tile", unit="images", stream=out) as bar:
        for index in range(3):
            bar.log(f"image{index}.png: 5 nuclei")
            bar.advance(1, nuclei=5 * (index + 1))
    lines = out.getvalue().splitlines()
    assert lines[:3] == [f"image{i}.png: 5 nuclei" for i in range(3)]
    assert len(lines) == 4
    assert lines[3].startswith("infer tile: 3/3 images")
    assert "nuclei=15" in lines[3]


def test_plain_stream_prints_periodic_summaries():
    out = io.StringIO()
    bar = Progress(10, "train", unit="batches", stream=out)
    bar.summary_every = 0.0
    with bar:
        bar.advance(2, loss=0.51234)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train: 2/10 batches") and "loss=0.5123" in lines[0]


def test_quiet_mutes_everything_but_important_lines():
    out = io.StringIO()
    with Progress(2, "stats", quiet=True, stream=out) as bar:
        bar.log("routine")
        bar.log("warning: grayscale", important=True)
        bar.advance(2)
    assert out.getvalue().splitlines() == ["warning: grayscale"]


def test_terminal_bar_shows_count_fields_and_logs():
    out = io.StringIO()
    with Progress(4, "extract", unit="patches", stream=out, terminal=True) as bar:
        bar.log("slide1: 2 patches")
        bar.advance(2, nuclei=7)
    text = out.getvalue()
    assert "slide1: 2 patches" in text
    assert "2/4" in text and "nuclei=7" in text


def test_unknown_total_and_format_fields():
    out = io.StringIO()
    with Progress(None, "scan", stream=out) as bar:
        bar.advance(5)
    assert out.getvalue().startswith("scan: 5 items")
    assert format_fields({"a": 1, "b": 0.123456}) == "a=1 b=0.1235"
