"""TensorFlow .npz -> PyTorch conversion against the original's name table (tf_names.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REFERENCE, recipe_arrays

from hovernet.cli import main
from hovernet.errors import HoverNetError
from hovernet.model.checkpoints import load_model
from hovernet.model.convert import convert_npz, tf_name


def recipe(case: str) -> dict[str, np.ndarray]:
    return recipe_arrays(case)


def tf_arrays(sd: dict[str, np.ndarray], names: dict[str, str]) -> dict[str, np.ndarray]:
    """What the TF checkpoint holds: the same tensors under TF names, kernels HWIO."""
    return {
        tf: sd[pt].transpose(2, 3, 1, 0) if sd[pt].ndim == 4 else sd[pt] for tf, pt in names.items()
    }


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def tf_table() -> dict[str, str]:
    return json.loads((REFERENCE / "tf_names.json").read_text())


def test_tf_names_reproduce_the_original_table(tf_table):
    keys = json.loads((REFERENCE / "keys_original_types5.json").read_text())
    derived = {tf_name(k): k for k in keys if tf_name(k) is not None}
    assert derived == tf_table


def test_cli_converts_typed_npz_to_recipe_state_dict(tmp_path, tf_table, capsys):
    sd = recipe("original_types5")
    npz = tmp_path / "hovernet_consep.npz"
    np.savez(npz, **tf_arrays(sd, tf_table), **{"global_step:0": np.array(5)})
    info = tmp_path / "type_info.json"
    info.write_text(json.dumps({"0": ["background", [0, 0, 0]], "1": ["other", [255, 0, 0]]}))
    out = tmp_path / "out" / "consep.pth"
    args = ["convert-checkpoint", str(npz), str(out), "--type_info", str(info), "--mpp", "0.25"]
    assert run_cli(args) == 0
    assert "1 TF variables not used" in capsys.readouterr().out
    converted = torch.load(out, weights_only=True)["desc"]
    assert sorted(converted) == sorted(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(converted[key].numpy(), value, err_msg=key)
    model = load_model(out)
    assert (model.mode, model.nr_types, model.meta.mpp) == ("original", 5, 0.25)
    assert model.meta.type_info[1] == ("other", (255, 0, 0))


@pytest.mark.parametrize("case", ["fast_types6", "original_notype"])
def test_convert_other_layouts(tmp_path, case):
    sd = recipe(case)
    names = {tf_name(k): k for k in sd if tf_name(k) is not None}
    arrays = tf_arrays(sd, names)
    # released .npz files may store names without the ':0' suffix
    npz = tmp_path / "tf.npz"
    np.savez(npz, **{k.removesuffix(":0"): v for k, v in arrays.items()})
    model, unused = convert_npz(npz, tmp_path / "out.pth")
    assert not unused
    loaded = load_model(tmp_path / "out.pth")
    assert (loaded.mode, loaded.nr_types) == (model.mode, model.nr_types)
    for key, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sd[key], err_msg=key)


def test_convert_errors(tmp_path, tf_table):
    sd = recipe("original_notype")
    names = {tf_name(k): k for k in sd if tf_name(k) is not None}
    arrays = tf_arrays(sd, names)
    del arrays["group2/block3/conv2/W:0"]
    npz = tmp_path / "partial.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "out.pth"
    with pytest.raises(HoverNetError, match=r"partial\.npz lacks 1 .*group2/block3/conv2/W:0"):
        convert_npz(npz, out)
    assert not out.exists()
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"no zip here")
    with pytest.raises(HoverNetError, match=r"garbage\.npz is not a readable \.npz"):
        convert_npz(garbage, out)
    with pytest.raises(HoverNetError, match="is not a HoVer-Net TensorFlow checkpoint"):
        np.savez(tmp_path / "other.npz", w=np.zeros(3))
        convert_npz(tmp_path / "other.npz", out)


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    code = run_cli(["convert-checkpoint", str(tmp_path / "missing.npz"), str(tmp_path / "o.pth")])
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_adds_metadata_to_original_pytorch_checkpoint(tmp_path):
    sd = {k: torch.from_numpy(v) for k, v in recipe("fast_types6").items()}
    src = tmp_path / "hovernet_fast_pannuke_type_tf2pytorch.tar"
    torch.save({"desc": sd}, src)
    dst = tmp_path / "pannuke.pth"
    assert run_cli(["convert-checkpoint", str(src), str(dst), "--mpp", "0.25"]) == 0
    model = load_model(dst)
    assert (model.meta.mode, model.meta.nr_types, model.meta.mpp) == ("fast", 6, 0.25)
