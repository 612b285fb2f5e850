"""`ats attack`: the JSON contract, the PNG grid, and exit status 2 on bad input."""
from __future__ import annotations

import json

import pytest

from ats.cli import main
from ats.runtime import asset_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_attack_json_contract(capsys, tmp_path, data_dir):
    code, out, _ = run(capsys, "attack", "--indices", "0-1", "--model", "lenet", "--attack", "idlg",
                       "--iterations", "20", "--json", "--out", str(tmp_path), "--device", "cpu")
    assert code == 0
    doc = json.loads(out)
    assert doc["device"] == "cpu" and doc["seconds"] > 0
    assert [r["index"] for r in doc["results"]] == [0, 1]
    keys = {"index", "label", "label_recovered", "psnr_x", "psnr_tx", "ssim_x", "ssim_tx",
            "iterations", "status"}
    assert keys <= set(doc["results"][0])
    assert all(r["label_recovered"] for r in doc["results"])
    assert doc["results"][0]["iterations"] == 20
    assert (tmp_path / "grid.png").stat().st_size > 500
    assert json.loads((tmp_path / "results.json").read_text())["results"] == doc["results"]


def test_attack_with_policy_reports_both_psnrs(capsys, tmp_path, data_dir):
    code, out, _ = run(capsys, "attack", "--model", "resnet20", "--policy", "3-1-7", "--iterations", "3",
                       "--json", "--out", str(tmp_path))
    assert code == 0
    result = json.loads(out)["results"][0]
    assert result["psnr_x"] != result["psnr_tx"]
    assert json.loads(out)["policy"] == "3-1-7"


@pytest.mark.parametrize("argv, fragment", [
    (["--policy", "3--1"], "empty"),
    (["--policy", "3-50"], "50"),
    (["--defense", "prune-100"], "prune"),
    (["--indices", "0-x"], "0-x"),
    (["--model", "vgg"], "vgg"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, fragment, data_dir):
    code, _, err = run(capsys, "attack", "--iterations", "1", "--out", str(tmp_path), *argv)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("ats attack: error:") and fragment in line


def test_corrupt_checkpoint_exits_2(capsys, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "attack", "--checkpoint", str(bad), "--out", str(tmp_path))
    assert code == 2 and "model.pt" in err


def test_attack_an_image_file(capsys, tmp_path):
    from ats.data import load_samples

    samples = load_samples()
    path = sorted(asset_path("samples").glob("*.png"))[0]
    code, out, _ = run(capsys, "attack", "--image", str(path), "--label", "3", "--model", "lenet",
                       "--attack", "idlg", "--iterations", "5", "--json", "--out", str(tmp_path))
    assert code == 0 and len(samples) > 0
    assert json.loads(out)["results"][0]["label"] == 3
