"""The procedural glyphs that pretrain the drawings backbone, and the fine-tune's automatic choice of backbone."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from PIL import Image

from engine.vision.glyphs import GlyphConfig, bezier, glyph_dataset, make_glyphs, render

ROOT = Path(__file__).resolve().parents[1]


def test_a_bezier_curve_runs_from_its_first_to_its_last_control_point():
    control = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    points = bezier(control, 5)
    assert torch.allclose(points[0], control[0]) and torch.allclose(points[-1], control[3])
    assert torch.allclose(points[2], torch.tensor([0.5, 0.75]))  # the middle of this arch, by symmetry


def test_glyphs_are_drawn_like_mnist_digits():
    """White ink on black, inside a 20-pixel box centred in 28x28, with a soft edge; one to three strokes."""
    config = GlyphConfig(n_classes=50)
    control, mask = make_glyphs(config)
    assert control.shape == (50, 3, 4, 2) and mask[:, 0].all() and set(mask.sum(1).tolist()) == {1, 2, 3}
    images = render(control, mask, config, torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8 and images.shape == (50, 1, 28, 28)
    ink = images[:, 0] > 0
    assert ink.any(dim=(1, 2)).all()
    assert not ink[:, :3].any() and not ink[:, -3:].any() and not ink[:, :, :3].any() and not ink[:, :, -3:].any()
    assert 0.05 < images.float().mean() / 255 < 0.3
    assert ((images > 0) & (images < 255)).any()  # antialiased


def test_examples_of_one_glyph_are_alike_and_differ_from_other_glyphs():
    """What makes them classes: each example is nearer its own glyph's other examples than other glyphs'."""
    config = GlyphConfig(n_classes=20, seed=3)
    images, labels = glyph_dataset(config, per_class=6, seed=1)
    assert images.shape == (120, 1, 28, 28) and torch.bincount(labels).tolist() == [6] * 20
    x = images.flatten(1).float()
    x = x / x.norm(dim=1, keepdim=True)
    similarity = x @ x.T
    similarity.fill_diagonal_(-1)
    nearest = labels[similarity.argmax(1)]
    assert (nearest == labels).float().mean() > 0.5  # pixels alone, no network: chance is 0.05


def test_the_same_seeds_draw_the_same_glyphs():
    config = GlyphConfig(n_classes=5)
    first, second = glyph_dataset(config, 2, seed=7), glyph_dataset(config, 2, seed=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], glyph_dataset(config, 2, seed=8)[0])


def glyph_upload(path: Path, classes: int = 3, per_class: int = 12) -> Path:
    """A user's drawings: glyphs of a seed the backbone was not trained on, as PNGs in class folders."""
    images, labels = glyph_dataset(GlyphConfig(n_classes=classes, seed=1234), per_class, seed=0)
    with zipfile.ZipFile(path, "w") as archive:
        for i, (image, label) in enumerate(zip(images, labels)):
            buffer = io.BytesIO()
            Image.fromarray(image[0].numpy()).save(buffer, format="PNG")
            archive.writestr(f"drawings/sign{int(label)}/{i}.png", buffer.getvalue())
    return path


def test_auto_chooses_the_backbone_whose_features_fit_the_upload_and_says_so(tmp_path):
    from engine.checkpoints import read_card
    from engine.vision.finetune import AUTO_BACKBONES, ImageFinetuneConfig, finetune_images

    events = []
    config = ImageFinetuneConfig(time_budget=3, val_fraction=0.25)
    assert config.backbone == "auto"
    result = finetune_images([glyph_upload(tmp_path / "up.zip")], config, tmp_path / "work", tmp_path / "model",
                             on_progress=events.append)
    metrics = result["metrics"]
    scores = metrics["cv_accuracy_by_backbone"]
    assert set(scores) == set(AUTO_BACKBONES) and all(0 <= s <= 1 for s in scores.values())
    assert metrics["backbone"] == max(scores, key=scores.get)
    assert read_card(result["folder"])["backbone"] == metrics["backbone"]
    assert {"kind": "stage", "stage": "choosing the backbone"} in events
    # Drawings: the network pretrained on glyphs separates three new ones better than the photo network does.
    assert metrics["backbone"] == "glyphs", scores


def test_auto_keeps_cifar10_for_pictures_that_are_not_grey_drawings():
    """Colour, or a ground neither dark nor light: glyphs fine-tuned badly on such uploads (the coloured shapes
    example) even where its probe won, so no probe is run."""
    from engine.vision.finetune import choose_backbone, grey_drawings

    drawings, labels = glyph_dataset(GlyphConfig(n_classes=3, seed=1234), 12, seed=0)
    drawings = drawings.repeat(1, 3, 1, 1)
    assert grey_drawings(drawings) == "dark"
    assert grey_drawings(255 - drawings) == "light"  # the same drawings, dark ink on white paper
    tinted = drawings.clone()
    tinted[:, 0] = tinted[:, 0] // 2  # coloured ink
    assert grey_drawings(tinted) is None and grey_drawings(255 - tinted) is None
    assert grey_drawings(drawings // 2 + 100) is None  # a mid-grey ground
    assert choose_backbone(tinted, labels, 3, seed=0) == ("cifar10", {})


def test_a_grey_backbone_sees_dark_on_light_drawings_as_it_saw_light_on_dark_ones():
    """Inverting is folded into the model (mean read as 1 - mean, the first layer's weights negated): the
    features of drawings on paper are those of the same drawings on black, and the model needs no new step."""
    from engine.vision.finetune import pooled_features, start_network
    from engine.vision.train import normalise

    drawings, _ = glyph_dataset(GlyphConfig(n_classes=3, seed=1234), 4, seed=0)
    drawings = drawings.repeat(1, 3, 1, 1)
    on_black, _, _, black_pre = start_network("glyphs", 3, drawings)
    on_paper, _, _, paper_pre = start_network("glyphs", 3, 255 - drawings)
    assert paper_pre["mean"] != black_pre["mean"] and paper_pre["std"] == black_pre["std"]
    black = pooled_features(on_black, normalise(drawings, black_pre["mean"], black_pre["std"]))
    paper = pooled_features(on_paper, normalise(255 - drawings, paper_pre["mean"], paper_pre["std"]))
    assert torch.allclose(black, paper, atol=1e-3)
    assert not torch.allclose(black, pooled_features(on_black, normalise(255 - drawings, black_pre["mean"], black_pre["std"])), atol=1e-1)


def test_auto_fine_tunes_glyphs_on_drawings_on_paper_and_the_tab_serves_them(tmp_path):
    from engine.vision.classify import ShippedClassifier
    from engine.vision.finetune import ImageFinetuneConfig, finetune_images

    upload = tmp_path / "paper.zip"
    with zipfile.ZipFile(glyph_upload(tmp_path / "ink.zip")) as source, zipfile.ZipFile(upload, "w") as archive:
        for name in source.namelist():
            image = Image.open(io.BytesIO(source.read(name)))
            buffer = io.BytesIO()
            Image.eval(image, lambda v: 255 - v).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())
    result = finetune_images([upload], ImageFinetuneConfig(time_budget=3, val_fraction=0.25), tmp_path / "work",
                             tmp_path / "model")
    assert result["metrics"]["backbone"] == "glyphs" and result["metrics"]["inverted"] is True
    assert result["metrics"]["val_accuracy"] >= 2 / 3
    classifier = ShippedClassifier(result["folder"])  # the Image tab's path: the saved model takes paper drawings as they are
    with zipfile.ZipFile(upload) as archive:
        names = [name for name in archive.namelist() if name.endswith(".png")]
        right = sum(classifier.labels[classifier.classify(Image.open(io.BytesIO(archive.read(name))))["class_index"]]
                    == name.split("/")[1] for name in names)
    assert right / len(names) >= 0.75


def test_the_shipped_glyphs_backbone_is_a_backbone_not_an_image_classifier():
    """It is offered to the Fine-tune tab only: its 1,000 classes mean nothing to a user of the Image tab."""
    from engine.checkpoints import read_card
    from engine.registry import build_default_registry

    card = read_card(ROOT / "checkpoints" / "glyphs")
    assert card["task"] == "image-backbone" and len(card["labels"]) == 1000
    assert "python -m engine train glyphs" in card["command"]
    registry = build_default_registry()
    assert "glyphs" not in [entry.name for entry in registry.list("image-classification")]
    assert "glyphs" in [entry.name for entry in registry.list("image-backbone")]
