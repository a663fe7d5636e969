"""engine/uploads.py: zips of class folders are unpacked safely and read as (file, label) pairs.

Hostile archives (zip-slip, zip bombs, symlinks, nested archives) are refused or skipped, nothing is
written outside the target folder, and every skipped entry says why. Every zip is made here, in tmp_path."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import UserError
from engine.uploads import ClassFolderDataset, ZipLimits, read_class_folders, safe_extract_zip


def png_bytes(colour=(200, 30, 30), size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


def make_zip(path: Path, members: list, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """members: (name, data) pairs, or ZipInfo/data pairs for full control (attributes, odd names)."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members:
            info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            archive.writestr(info, data)
    return path


def pets(prefix: str = "") -> list[tuple[str, bytes]]:
    return [(f"{prefix}cats/a.png", PNG), (f"{prefix}cats/b.png", png_bytes((10, 10, 10))),
            (f"{prefix}dogs/c.png", png_bytes((0, 0, 250)))]


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def check_reasons(dataset_or_skipped) -> list[tuple[str, str]]:
    skipped = dataset_or_skipped.skipped if isinstance(dataset_or_skipped, ClassFolderDataset) else dataset_or_skipped
    for entry in skipped:
        assert isinstance(entry, tuple) and len(entry) == 2, entry
        name, reason = entry
        assert isinstance(name, str) and name, entry
        assert isinstance(reason, str) and reason.strip(), f"{name} skipped without a reason"
    return skipped


# --- the normal case ------------------------------------------------------------------------------------


def test_zip_with_class_folders_at_top_level(tmp_path: Path):
    source = make_zip(tmp_path / "pets.zip", pets())
    dataset = read_class_folders(source, workdir=tmp_path / "work")
    assert dataset.classes == ["cats", "dogs"]
    assert dataset.counts() == {"cats": 2, "dogs": 1}
    assert [f.name for f in dataset.files] == ["a.png", "b.png", "c.png"]
    assert dataset.labels == ["cats", "cats", "dogs"]
    assert dataset.skipped == []
    work = (tmp_path / "work").resolve()
    for file in dataset.files:
        assert file.is_file() and work in file.resolve().parents
        assert Image.open(file).size == (4, 4)
    assert dataset.root.resolve() == (work / "data")


def test_zip_with_one_wrapping_folder(tmp_path: Path):
    source = make_zip(tmp_path / "pets.zip", pets("my-pets/"))
    dataset = read_class_folders(source, workdir=tmp_path / "work")
    assert dataset.classes == ["cats", "dogs"]  # not ["my-pets"]
    assert dataset.counts() == {"cats": 2, "dogs": 1}
    assert dataset.root.name == "my-pets"
    assert check_reasons(dataset) == []


def test_plain_folder_of_class_folders(tmp_path: Path):
    for name, data in pets():
        (tmp_path / "pets" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pets" / name).write_bytes(data)
    dataset = read_class_folders(tmp_path / "pets")
    assert dataset.classes == ["cats", "dogs"] and dataset.counts() == {"cats": 2, "dogs": 1}


# --- hostile archives -----------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", ["../evil.png", "cats/../../evil.png", "..\\evil.png", "C:/evil.png", "ABSOLUTE"])
def test_zip_slip_is_refused_and_nothing_lands_outside(tmp_path: Path, evil: str):
    outside = tmp_path / "outside"
    outside.mkdir()
    if evil == "ABSOLUTE":
        evil = str(outside / "evil.png")  # an absolute path, like /etc/x.png, that would really be writable
        assert evil.startswith("/")
    source = make_zip(tmp_path / "slip.zip", pets() + [(evil, PNG)])
    target = outside / "work" / "data"
    with pytest.raises(UserError, match="unsafe path"):
        safe_extract_zip(source, target)
    assert files_under(outside) <= {f"work/data/{name}" for name, _ in pets()}
    assert not any(p.name == "evil.png" for p in tmp_path.rglob("*"))


def test_absolute_member_is_refused(tmp_path: Path):
    source = make_zip(tmp_path / "abs.zip", [("/etc/x.png", PNG)])
    with pytest.raises(UserError, match=r"unsafe path '/etc/x\.png'"):
        read_class_folders(source, workdir=tmp_path / "work")
    assert files_under(tmp_path) == {"abs.zip"}


def test_zip_bomb_is_refused_before_writing(tmp_path: Path):
    zeros = bytes(50 * 2**20)  # 50 MB of zeros compresses about 1000-fold
    source = make_zip(tmp_path / "bomb.zip", [("cats/a.png", PNG), ("cats/bomb.png", zeros)])
    del zeros
    assert source.stat().st_size < 200_000
    target = tmp_path / "work"
    with pytest.raises(UserError, match=r"'cats/bomb\.png' expands [\d,]+-fold; this looks like a zip bomb"):
        safe_extract_zip(source, target)
    assert "cats/bomb.png" not in files_under(target)


def test_zip_bigger_than_the_total_cap_is_refused(tmp_path: Path):
    big = os.urandom(2 * 2**20)  # incompressible, so the ratio check stays out of the way
    source = make_zip(tmp_path / "big.zip", [("cats/big.png", big)], compression=zipfile.ZIP_STORED)
    target = tmp_path / "work"
    with pytest.raises(UserError, match="unpacks to 2 MB; the limit is 1 MB"):
        safe_extract_zip(source, target, ZipLimits(max_total_bytes=2**20))
    assert files_under(tmp_path) == {"big.zip"}


def test_member_bigger_than_the_member_cap_is_skipped(tmp_path: Path):
    big = os.urandom(2 * 2**20)
    source = make_zip(tmp_path / "big.zip", pets() + [("cats/huge.png", big)], compression=zipfile.ZIP_STORED)
    root, skipped = safe_extract_zip(source, tmp_path / "work", ZipLimits(max_member_bytes=2**20))
    assert check_reasons(skipped) == [("cats/huge.png", "larger than 1 MB")]
    assert files_under(root) == {name for name, _ in pets()}


def test_too_many_entries_is_refused(tmp_path: Path):
    source = make_zip(tmp_path / "many.zip", pets())
    with pytest.raises(UserError, match="holds 3 entries; the limit is 2"):
        safe_extract_zip(source, tmp_path / "work", ZipLimits(max_files=2))


# --- skipped entries, each with a reason ----------------------------------------------------------------


@pytest.fixture
def messy_zip(tmp_path: Path) -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as nested:
        nested.writestr("cats/hidden.png", PNG)
    link = zipfile.ZipInfo("cats/link.png", date_time=(2024, 1, 1, 0, 0, 0))
    link.create_system = 3  # Unix
    link.external_attr = 0o120777 << 16  # a symbolic link ...
    members = pets() + [
        ("cats/more.zip", inner.getvalue()),  # a zip inside the zip
        ("__MACOSX/cats/._a.png", b"\x00\x05\x16\x07 mac resource fork"),
        ("cats/.DS_Store", b"\x00\x00\x00\x01Bud1"),
        (link, "../../../../etc/passwd"),  # ... pointing outside
        ("cats/notes.txt", b"these are cats"),
        ("readme.md", b"# my pets"),
    ]
    return make_zip(tmp_path / "messy.zip", members)


def test_safe_extract_lists_what_it_skipped(messy_zip: Path, tmp_path: Path):
    root, skipped = safe_extract_zip(messy_zip, tmp_path / "work")
    reasons = dict(check_reasons(skipped))
    assert reasons.keys() == {"cats/more.zip", "__MACOSX/cats/._a.png", "cats/.DS_Store", "cats/link.png"}
    assert "archive inside the archive" in reasons["cats/more.zip"]
    assert reasons["__MACOSX/cats/._a.png"] == "hidden or system file"
    assert reasons["cats/.DS_Store"] == "hidden or system file"
    assert reasons["cats/link.png"] == "symbolic link"
    # skipped members are not written; the rest is (notes and readme are sorted out by read_class_folders)
    assert files_under(root) == {"cats/a.png", "cats/b.png", "dogs/c.png", "cats/notes.txt", "readme.md"}
    assert not any(p.is_symlink() for p in root.rglob("*"))


def test_read_class_folders_on_a_messy_zip(messy_zip: Path, tmp_path: Path):
    dataset = read_class_folders(messy_zip, workdir=tmp_path / "work")
    assert dataset.classes == ["cats", "dogs"]
    assert dataset.counts() == {"cats": 2, "dogs": 1}
    assert sorted(f.name for f in dataset.files) == ["a.png", "b.png", "c.png"]
    reasons = dict(check_reasons(dataset))
    assert reasons["cats/more.zip"].startswith("archive inside the archive")
    assert reasons["__MACOSX/cats/._a.png"] == "hidden or system file"
    assert reasons["cats/.DS_Store"] == "hidden or system file"
    assert reasons["cats/link.png"] == "symbolic link"
    assert reasons["cats/notes.txt"] == "not an image (.txt)"
    assert reasons["readme.md"] == "not inside a class folder"
    assert len(dataset.skipped) == 6


def test_zip_without_images_is_refused(tmp_path: Path):
    source = make_zip(tmp_path / "empty.zip", [("cats/notes.txt", b"no pictures"), ("readme.md", b"hi"),
                                                ("__MACOSX/cats/._x.png", b"\x00")])
    with pytest.raises(UserError, match=r"No images found in class folders"):
        read_class_folders(source, workdir=tmp_path / "work")


def test_zip_with_only_loose_images_is_refused(tmp_path: Path):
    source = make_zip(tmp_path / "loose.zip", [("a.png", PNG), ("b.png", PNG)])
    with pytest.raises(UserError, match="one sub-folder of images per class"):
        read_class_folders(source, workdir=tmp_path / "work")


def test_file_named_zip_that_is_not_a_zip_is_refused(tmp_path: Path):
    fake = tmp_path / "data.zip"
    fake.write_bytes(b"PK? no, just text pretending to be a zip\n" * 10)
    with pytest.raises(UserError, match=r"data\.zip is not a readable zip file"):
        read_class_folders(fake, workdir=tmp_path / "work")
    with pytest.raises(UserError, match=r"data\.zip is not a readable zip file"):
        safe_extract_zip(fake, tmp_path / "work")


def test_file_that_is_not_a_zip_at_all_is_refused(tmp_path: Path):
    other = tmp_path / "data.tar"
    other.write_bytes(b"\x00" * 1024)
    with pytest.raises(UserError, match=r"data\.tar: expected a zip of class folders or a folder"):
        read_class_folders(other, workdir=tmp_path / "work")


def test_missing_path_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match="neither a folder nor a zip file"):
        read_class_folders(tmp_path / "nothing-here")


def test_damaged_member_is_a_clear_error_and_leaves_no_half_file(tmp_path):
    """A member whose bytes were corrupted after zipping (bad CRC) is refused by name."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("cats/a.png", b"A" * 5000)
    data = bytearray(buffer.getvalue())
    data[100] ^= 0xFF  # flip a byte inside the stored member
    path = tmp_path / "damaged.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        safe_extract_zip(path, tmp_path / "out")
    assert not (tmp_path / "out" / "cats" / "a.png").exists()


def test_unknown_compression_and_encryption_are_named(tmp_path):
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cats/a.png", b"x" * 10)
    raw = bytearray(path.read_bytes())
    central = raw.find(b"PK\x01\x02")
    raw[8:10] = raw[central + 10:central + 12] = (99).to_bytes(2, "little")  # compression method 99
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="compression method 99"):
        safe_extract_zip(path, tmp_path / "out")
    raw[8:10] = raw[central + 10:central + 12] = (0).to_bytes(2, "little")
    raw[6] |= 1  # the "encrypted" flag bit, in the local and the central header
    raw[central + 8] |= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="encrypted"):
        safe_extract_zip(path, tmp_path / "out2")
