"""engine/checkpoints.py: a model folder (card.json + weights.safetensors) round-trips exactly, and every
kind of broken or hostile model folder or zip is refused with a UserError naming what is wrong."""
from __future__ import annotations

import json
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

import engine.architectures  # noqa: F401  (registers "resnet" so read_card knows it)
from engine.checkpoints import (ARCHITECTURES, CARD_FILE, CARD_FORMAT, REQUIRED_KEYS, WEIGHTS_FILE, load_model,
                                read_card, save_model, unpack_model_zip, zip_model_folder)
from engine.errors import UserError
from engine.vision.nets import ResNet, ResNetConfig, resnet_config_dict

PREPROCESSING = {"kind": "rgb", "size": 16, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}


def tiny_resnet(seed: int = 0) -> ResNet:
    """A 3-class ResNet with random weights *and* random batch-norm statistics, so that a round trip that
    forgot the buffers (or mixed up tensors) would change the outputs."""
    torch.manual_seed(seed)
    model = ResNet(ResNetConfig(in_channels=3, num_classes=3, widths=[4, 8, 8], blocks=[1, 1, 1]))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def card_for(model: ResNet, **changes) -> dict:
    card = {"name": "tiny", "task": "image-classification", "architecture": "resnet",
            "arch_config": resnet_config_dict(model.config), "labels": ["cat", "dog", "bird"],
            "preprocessing": dict(PREPROCESSING), "metrics": {"val_accuracy": 0.5}, "command": "tests"}
    card.update(changes)
    return card


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, ResNet]:
    model = tiny_resnet()
    folder = save_model(tmp_path / "models" / "tiny", model, card_for(model))
    return folder, model


def edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / CARD_FILE).read_text())
    card.update(changes)
    (folder / CARD_FILE).write_text(json.dumps(card))


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --- round trips ----------------------------------------------------------------------------------------


def test_resnet_is_registered():
    assert "resnet" in ARCHITECTURES


def test_save_and_load_round_trip(saved):
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    loaded, card = load_model(folder)
    assert isinstance(loaded, ResNet) and not loaded.training
    assert loaded.config.widths == [4, 8, 8] and loaded.config.num_classes == 3
    assert same_outputs(model, loaded)
    assert not same_outputs(tiny_resnet(seed=1), loaded)  # the comparison can tell models apart
    assert card["format"] == CARD_FORMAT
    assert card["labels"] == ["cat", "dog", "bird"]
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["created"].endswith("Z")
    assert read_card(folder) == card


def test_weights_are_safetensors_not_pickle(saved):
    folder, _ = saved
    data = (folder / WEIGHTS_FILE).read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    assert header["__metadata__"]["format"] == CARD_FORMAT
    assert "stem.0.weight" in header and "stages.0.0.bn1.running_mean" in header


def test_zip_round_trip(saved, tmp_path: Path):
    folder, model = saved
    archive = zip_model_folder(folder, tmp_path / "tiny.zip")
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == [f"tiny/{CARD_FILE}", f"tiny/{WEIGHTS_FILE}"]
    unpacked = unpack_model_zip(archive, tmp_path / "download")
    assert (tmp_path / "download").resolve() in unpacked.resolve().parents
    assert (unpacked / CARD_FILE).read_bytes() == (folder / CARD_FILE).read_bytes()
    loaded, card = load_model(unpacked)
    assert same_outputs(model, loaded)
    assert card["name"] == "tiny"


def test_zip_with_card_at_top_level_loads(saved, tmp_path: Path):
    folder, model = saved
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name in (CARD_FILE, WEIGHTS_FILE):
            out.write(folder / name, name)
    loaded, _ = load_model(unpack_model_zip(archive, tmp_path / "download"))
    assert same_outputs(model, loaded)


def test_save_leaves_no_temporary_folders(tmp_path: Path):
    parent = tmp_path / "models"
    first = tiny_resnet(seed=0)
    save_model(parent / "tiny", first, card_for(first))
    assert [p.name for p in parent.iterdir()] == ["tiny"]
    second = tiny_resnet(seed=1)
    save_model(parent / "tiny", second, card_for(second, name="tiny v2"))  # overwrite in place
    assert [p.name for p in parent.iterdir()] == ["tiny"]
    assert not [p for p in parent.rglob("*") if p.name.startswith(".")]
    loaded, card = load_model(parent / "tiny")
    assert card["name"] == "tiny v2" and same_outputs(second, loaded)


def test_save_refuses_an_incomplete_card_and_writes_nothing(tmp_path: Path):
    model = tiny_resnet()
    card = card_for(model)
    del card["labels"]
    with pytest.raises(ValueError, match="labels"):
        save_model(tmp_path / "models" / "tiny", model, card)
    assert list((tmp_path / "models").iterdir()) == []


# --- refused model folders ------------------------------------------------------------------------------


def test_missing_card_is_refused(saved):
    folder, _ = saved
    (folder / CARD_FILE).unlink()
    with pytest.raises(UserError, match=r"tiny: not a minilab model folder \(no card\.json\)"):
        load_model(folder)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"], ids=["broken", "empty", "binary"])
def test_card_that_is_not_json_is_refused(saved, text: str):
    folder, _ = saved
    (folder / CARD_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match=r"card\.json is not valid JSON"):
        load_model(folder)


def test_card_that_is_not_an_object_is_refused(saved):
    folder, _ = saved
    (folder / CARD_FILE).write_text('["resnet", "cat", "dog"]')
    with pytest.raises(UserError, match="must hold a JSON object"):
        read_card(folder)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_card_missing_a_key_is_refused(saved, key: str):
    folder, _ = saved
    card = json.loads((folder / CARD_FILE).read_text())
    del card[key]
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(UserError, match=rf"the model card lacks {key}\b"):
        load_model(folder)


def test_unknown_architecture_is_refused(saved):
    folder, _ = saved
    edit_card(folder, architecture="transformer9000")
    with pytest.raises(UserError, match=r"unknown architecture 'transformer9000' \(known: .*resnet"):
        load_model(folder)


def test_unknown_format_is_refused(saved):
    folder, _ = saved
    edit_card(folder, format="minilab-model/99")
    with pytest.raises(UserError, match=r"unknown model format 'minilab-model/99'"):
        load_model(folder)


def test_unknown_task_is_refused(saved):
    folder, _ = saved
    edit_card(folder, task="mind-reading")
    with pytest.raises(UserError, match=r"unknown task 'mind-reading'"):
        load_model(folder)


@pytest.mark.parametrize("labels", [[1, 2, 3], "cat,dog,bird", ["cat", None, "bird"], {"0": "cat"}],
                         ids=["ints", "string", "none-inside", "dict"])
def test_labels_must_be_a_list_of_strings(saved, labels):
    folder, _ = saved
    edit_card(folder, labels=labels)
    with pytest.raises(UserError, match="labels must be a list of strings"):
        load_model(folder)


def test_arch_config_must_be_an_object(saved):
    folder, _ = saved
    edit_card(folder, arch_config=[4, 8, 8])
    with pytest.raises(UserError, match="arch_config and preprocessing must be JSON objects"):
        load_model(folder)


def test_arch_config_that_does_not_build_is_refused(saved):
    folder, _ = saved
    card = json.loads((folder / CARD_FILE).read_text())
    edit_card(folder, arch_config={**card["arch_config"], "depth_multiplier": 3})
    with pytest.raises(UserError, match="arch_config does not build a model.*depth_multiplier"):
        load_model(folder)


def pickled_state(folder: Path) -> bytes:
    return pickle.dumps({"stem.0.weight": torch.zeros(4, 3, 3, 3).numpy()})


@pytest.mark.parametrize("make", [
    pickled_state,
    lambda folder: random.Random(0).randbytes(4096),
    lambda folder: b"",
    lambda folder: (folder / WEIGHTS_FILE).read_bytes()[: (folder / WEIGHTS_FILE).stat().st_size // 2],
], ids=["pickle", "random-bytes", "empty", "truncated-safetensors"])
def test_weights_that_are_not_safetensors_are_refused(saved, make):
    folder, _ = saved
    data = make(folder)
    (folder / WEIGHTS_FILE).write_bytes(data)
    with pytest.raises(UserError, match=r"weights\.safetensors is not a readable safetensors file"):
        load_model(folder)


def test_missing_weights_are_refused(saved):
    folder, _ = saved
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(UserError, match=r"no weights\.safetensors beside the card"):
        load_model(folder)


@pytest.mark.parametrize("change", [{"widths": [4, 8, 16]}, {"num_classes": 5}, {"blocks": [1, 2, 1]}],
                         ids=["widths", "num_classes", "blocks"])
def test_weights_that_do_not_fit_the_card_are_refused(saved, change):
    folder, _ = saved
    card = json.loads((folder / CARD_FILE).read_text())
    edit_card(folder, arch_config={**card["arch_config"], **change})
    with pytest.raises(UserError, match="the weights do not match the card's architecture"):
        load_model(folder)


# --- refused model zips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix, evil", [("tiny/", "tiny/../../evil.txt"), ("", "../evil.txt"),
                                          ("", "ABSOLUTE")], ids=["nested-dotdot", "top-dotdot", "absolute"])
def test_model_zip_with_zip_slip_is_refused(saved, tmp_path: Path, prefix: str, evil: str):
    folder, _ = saved
    outside = tmp_path / "outside"
    outside.mkdir()
    if evil == "ABSOLUTE":
        evil = str(outside / "evil.txt")
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.write(folder / CARD_FILE, prefix + CARD_FILE)
        out.writestr(zipfile.ZipInfo(evil), b"owned")
        out.write(folder / WEIGHTS_FILE, prefix + WEIGHTS_FILE)
    with pytest.raises(UserError, match=r"slip\.zip: unsafe path"):
        unpack_model_zip(archive, outside / "download")
    assert not [p for p in tmp_path.rglob("evil.txt")]


@pytest.mark.parametrize("cards", [0, 2])
def test_model_zip_needs_exactly_one_card(saved, tmp_path: Path, cards: int):
    folder, _ = saved
    archive = tmp_path / "cards.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.write(folder / WEIGHTS_FILE, WEIGHTS_FILE)
        for index in range(cards):
            out.write(folder / CARD_FILE, f"copy{index}/{CARD_FILE}")
    with pytest.raises(UserError, match=rf"expected exactly one card\.json in the zip, found {cards}"):
        unpack_model_zip(archive, tmp_path / "download")


def test_model_zip_that_is_not_a_zip_is_refused(tmp_path: Path):
    fake = tmp_path / "model.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match=r"model\.zip: not a readable zip file"):
        unpack_model_zip(fake, tmp_path / "download")


def test_read_card_works_in_a_fresh_interpreter():
    """read_card must know the architectures without the caller importing them first."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "from engine.checkpoints import read_card; print(read_card('checkpoints/mnist')['architecture'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    expected = json.loads((ROOT / "checkpoints" / "mnist" / "card.json").read_text())["architecture"]
    assert result.stdout.strip() == expected, result.stderr
