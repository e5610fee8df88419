"""Tile mode's reruns are honest: finished images count only for the same model and settings
(the folder's hovernet-run.json); other ones are refused naming --overwrite, which redoes them."""

from __future__ import annotations

import json

import cv2
import pytest
from support.slide_helpers import disk_image

from hovernet.errors import HoverNetError
from hovernet.infer.tile import RUN_RECORD, TileConfig, run_tile
from hovernet.model.standin import BlobNet


@pytest.fixture()
def tiles(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        image = disk_image((200, 220), [(60, 70), (150, 120)])
        cv2.imwrite(str(folder / f"{name}.png"), image)
    return folder


def run(tiles, out, **kw):
    config = TileConfig((tiles,), out, post_proc_workers=0, **kw)
    return run_tile(BlobNet(), config, log=lambda line: None)


def test_finished_images_count_only_for_the_same_model(tiles, tmp_path):
    out = tmp_path / "out"
    first = run(tiles, out, model_id="aaaa")
    assert sorted(first.done) == ["a", "b"]
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["model_id"] == "aaaa" and record["phases"] == 1
    again = run(tiles, out, model_id="aaaa")
    assert again.skipped == ["a", "b"] and not again.done
    with pytest.raises(
        HoverNetError, match="another model.*model_id: 'aaaa' -> 'bbbb'.*--overwrite"
    ):
        run(tiles, out, model_id="bbbb")
    redone = run(tiles, out, model_id="bbbb", overwrite=True)
    assert sorted(redone.done) == ["a", "b"]
    assert json.loads((out / RUN_RECORD).read_text())["model_id"] == "bbbb"


def test_outputs_without_a_record_are_not_taken_as_finished(tiles, tmp_path):
    out = tmp_path / "out"
    run(tiles, out, model_id="aaaa")
    (out / RUN_RECORD).unlink()
    with pytest.raises(HoverNetError, match=f"no readable {RUN_RECORD}.*--overwrite"):
        run(tiles, out, model_id="aaaa")
