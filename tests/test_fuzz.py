"""Fuzzing (hypothesis): random bytes, names and shapes into every upload parser and the public engine entry
points. The only exception allowed out is UserError, the documented "clear message" type; anything else
(a traceback in the UI, a crash in the CLI) fails the test with the input that caused it."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import UserError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
member_names = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["../evil.png", "/abs.png", "a/../../b.png", "C:/win.png", "__MACOSX/._x.png", "cats/.DS_Store",
                     "cats/a.png", "dogs/b.jpg", "cats/nested.zip", "labels.csv", "x/y/z.png", "cats/", "\\\\server\\x.png"]))
member_bytes = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"filename,label\n"]))


def only_user_errors(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except UserError:
        return None


def random_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            try:
                archive.writestr(name, data)
            except (ValueError, UnicodeEncodeError, IndexError):  # IndexError: a name zipfile cuts to "" at a NUL
                continue
    return path


@FUZZ
@given(raw=st.binary(max_size=2000))
def test_random_bytes_as_an_image_upload_zip(tmp_path_factory, raw):
    from engine.uploads import read_image_upload

    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "upload.zip").write_bytes(raw)
    only_user_errors(read_image_upload, [tmp / "upload.zip"], tmp / "work")


@FUZZ
@given(members=st.lists(st.tuples(member_names, member_bytes), max_size=8))
def test_random_zip_members_never_escape_and_never_crash(tmp_path_factory, members):
    from engine.uploads import read_image_upload

    tmp = tmp_path_factory.mktemp("fuzz")
    work = tmp / "inside" / "work"
    only_user_errors(read_image_upload, [random_zip(tmp / "upload.zip", members)], work)
    outside = [p for p in tmp.rglob("*") if p.is_file() and p.name != "upload.zip" and (tmp / "inside") not in p.parents]
    assert not outside, f"written outside the job's folder: {outside}"


@FUZZ
@given(csv_bytes=st.binary(max_size=500), names=st.lists(st.text(min_size=1, max_size=12), max_size=4))
def test_random_csv_with_loose_images(tmp_path_factory, csv_bytes, names):
    from engine.uploads import read_image_upload

    tmp = tmp_path_factory.mktemp("fuzz")
    paths = []
    for i, name in enumerate(names):
        safe = "".join(c for c in name if c.isalnum()) or f"img{i}"
        path = tmp / f"{safe}{i}.png"
        path.write_bytes(b"\x89PNG" + name.encode("utf-8", "replace"))
        paths.append(path)
    (tmp / "labels.csv").write_bytes(csv_bytes)
    only_user_errors(read_image_upload, [*paths, tmp / "labels.csv"], tmp / "work")


@FUZZ
@given(raw=st.binary(max_size=3000))
def test_random_bytes_as_a_labelled_text_file(tmp_path_factory, raw):
    from engine.text.data import read_labelled_text, read_text_file
    from engine.text.finetune import read_text_upload

    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "data.csv"
    path.write_bytes(raw)
    only_user_errors(read_labelled_text, path)
    only_user_errors(read_labelled_text, path, sentiment=True)
    only_user_errors(read_text_upload, [path])
    only_user_errors(read_text_file, path)


@FUZZ
@given(content=st.text(max_size=400))
def test_random_text_as_csv(content):
    from engine.text.data import parse_labelled_text

    only_user_errors(parse_labelled_text, content)
    only_user_errors(parse_labelled_text, content, labels_required=False)


@FUZZ
@given(raw=st.binary(max_size=2000))
def test_random_bytes_as_an_image(raw):
    from engine.images import load_image

    only_user_errors(load_image, raw)
    only_user_errors(load_image, raw, draft=32)


@FUZZ
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=4), dtype=st.sampled_from(["uint8", "uint16", "float32", "float64", "int64", "bool"]))
def test_random_arrays_into_every_preprocessing(shape, dtype):
    from engine.vision.preprocess import prepare

    array = np.random.default_rng(0).random(shape).astype(dtype) if shape else np.zeros((), dtype=dtype)
    for kind in ("rgb", "digit"):
        only_user_errors(prepare, array, {"kind": kind, "size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})


@FUZZ
@given(raw=st.binary(max_size=2000), members=st.lists(st.tuples(member_names, member_bytes), max_size=5))
def test_random_model_zips(tmp_path_factory, raw, members):
    from engine.checkpoints import read_card, unpack_model_zip

    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "raw.zip").write_bytes(raw)
    only_user_errors(unpack_model_zip, tmp / "raw.zip", tmp / "a")
    folder = only_user_errors(unpack_model_zip, random_zip(tmp / "m.zip", members), tmp / "b")
    if folder is not None:
        only_user_errors(read_card, folder)


@FUZZ
@given(values=st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-10**6, 10**6), st.none()), min_size=6, max_size=6),
       names=st.lists(st.text(max_size=10), max_size=3))
def test_random_settings_are_validated(values, names):
    from engine.text.finetune import CharFinetuneConfig, TextFinetuneConfig
    from engine.text.generate import SamplingSettings
    from engine.vision.finetune import ImageFinetuneConfig

    a, b, c, d, e, f = values
    backbone = names[0] if names else "cifar10"
    for make in (lambda: ImageFinetuneConfig(backbone=backbone, time_budget=a, max_epochs=b, batch_size=c, lr=d,
                                             val_fraction=e, image_size=f),
                 lambda: TextFinetuneConfig(time_budget=a, val_fraction=b, lora_epochs=c, lora_lr=d),
                 lambda: CharFinetuneConfig(time_budget=a, n_layer=b, n_head=c, n_embd=d, block_size=e, lr=f),
                 lambda: SamplingSettings(max_new_tokens=a, temperature=b, top_k=c, top_p=d, seed=e)):
        try:
            make().validate()
        except (UserError, TypeError):
            pass  # TypeError: None where a number belongs (the UI and CLI always give numbers of the right type)


@FUZZ
@given(counts=st.dictionaries(st.text(max_size=8), st.integers(0, 5), max_size=150))
def test_random_class_counts(counts):
    from engine.uploads import check_classes

    only_user_errors(check_classes, counts)


@pytest.fixture(scope="module")
def shipped_text_models():
    from engine.registry import default_registry

    return default_registry().get("sst2"), default_registry().get("shakespeare")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_random_text_into_the_shipped_text_models(shipped_text_models, text):
    from engine.text.generate import SamplingSettings

    sentiment, lm = shipped_text_models
    from engine.text.classify import clean_text

    result = only_user_errors(sentiment.explain, text)
    if result is not None:  # words are counted after cleaning, which turns control characters (NUL...) into spaces
        assert 0 <= result["confidence"] <= 1 and len(result["words"]) <= len(clean_text(text).split())
    pieces = only_user_errors(lambda: list(lm.stream(text, SamplingSettings(max_new_tokens=5))))
    assert pieces is None or len(pieces) == 5


def test_fuzzing_finds_what_it_should():
    """The harness itself: a non-UserError gets through only_user_errors, so the tests above can fail."""
    with pytest.raises(ZeroDivisionError):
        only_user_errors(lambda: 1 / 0)
    assert only_user_errors(lambda: (_ for _ in ()).throw(UserError("fine"))) is None

