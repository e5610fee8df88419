import json
from pathlib import Path

import pytest
from conftest import DATA

from hovernet.errors import HoverNetError
from hovernet.io.type_info import load_type_info, parse_type_info, type_info_json


def test_seed_type_info_round_trips(tmp_path: Path):
    info = load_type_info(DATA / "seed_format" / "type_info.json")
    assert info == {
        0: ("background", (0, 0, 0)),
        1: ("other nuclei", (255, 255, 0)),
        2: ("inflammatory", (255, 0, 0)),
    }
    (tmp_path / "t.json").write_text(type_info_json(info))
    assert load_type_info(tmp_path / "t.json") == info
    assert parse_type_info(info) == info  # the in-memory form parses to itself


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"1": ["x", [0, 0]]}), "three values"),
        (json.dumps({"1": ["x", [0, 0, 300]]}), "three values"),
        (json.dumps({"a": ["x", [0, 0, 0]]}), "type ids"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, text, needle):
    path = tmp_path / "type_info.json"
    path.write_text(text)
    with pytest.raises(HoverNetError, match=needle) as info:
        load_type_info(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(HoverNetError, match="does not exist"):
        load_type_info(tmp_path / "nope.json")
