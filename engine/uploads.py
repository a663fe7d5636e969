"""Safe reading of what users upload: zips and folders of images sorted into class folders.

Everything is checked before it is trusted: paths that climb out of the target (zip-slip), zip bombs
(total size and compression ratio are capped), symlinks, nested archives, hidden and system files
(__MACOSX, .DS_Store) and non-image files. What is skipped is listed with a reason, so the UI can say
what it understood. Nothing is written outside the folder it is given.
"""
from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from engine.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}
SYSTEM_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".git"}


@dataclass
class ZipLimits:
    max_files: int = 20_000
    max_total_bytes: int = 1 * 2**30  # uncompressed
    max_member_bytes: int = 100 * 2**20
    max_ratio: float = 200.0  # uncompressed / compressed, per member; real images compress far less


@dataclass
class ClassFolderDataset:
    root: Path
    files: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        return {name: self.labels.count(name) for name in self.classes}


def _is_hidden_or_system(parts: tuple[str, ...]) -> bool:
    return any(part in SYSTEM_NAMES or part.startswith(".") or part.startswith("._") for part in parts)


# Compression methods Python's zipfile can read; anything else (or an encrypted member) is refused by name.
READABLE_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                        zipfile.ZIP_LZMA: "lzma"}


def copy_zip_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, zip_name: str,
                    max_bytes: int | None = None) -> None:
    """Unpack one member to `target`, refusing encrypted members, unknown compression, damaged data and
    members larger than `max_bytes` (whatever their header claims). A half-written file is removed."""
    if member.flag_bits & 0x1:
        raise UserError(f"{zip_name}: {member.filename!r} is encrypted; minilab cannot unpack password-protected zips.")
    if member.compress_type not in READABLE_COMPRESSION:
        raise UserError(f"{zip_name}: {member.filename!r} uses compression method {member.compress_type}; "
                        f"re-zip it with {', '.join(READABLE_COMPRESSION.values())}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(member) as source, open(target, "wb") as sink:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:  # the header lied about the size
                    raise UserError(f"{zip_name}: {member.filename!r} is larger than its header says.")
                sink.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        target.unlink(missing_ok=True)
        raise UserError(f"{zip_name}: {member.filename!r} is damaged and cannot be unpacked ({error}).") from error
    except UserError:
        target.unlink(missing_ok=True)
        raise


def safe_extract_zip(zip_path: str | Path, into: str | Path, limits: ZipLimits = ZipLimits()) -> tuple[Path, list[tuple[str, str]]]:
    """Extract the members worth keeping into `into`; return it and the (name, reason) list of skipped ones."""
    zip_path, into = Path(zip_path), Path(into)
    name = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{name} is not a readable zip file.") from error
    skipped: list[tuple[str, str]] = []
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_files:
            raise UserError(f"{name} holds {len(members):,} entries; the limit is {limits.max_files:,}.")
        total = sum(member.file_size for member in members)
        if total > limits.max_total_bytes:
            raise UserError(f"{name} unpacks to {total / 2**20:,.0f} MB; the limit is {limits.max_total_bytes / 2**20:,.0f} MB.")
        into.mkdir(parents=True, exist_ok=True)
        root = into.resolve()
        for member in members:
            if member.is_dir():
                continue
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise UserError(f"{name} contains an unsafe path {member.filename!r} (it points outside the archive).")
            if _is_hidden_or_system(parts):
                skipped.append((member.filename, "hidden or system file"))
                continue
            if stat.S_ISLNK(member.external_attr >> 16):
                skipped.append((member.filename, "symbolic link"))
                continue
            suffix = PurePosixPath(member.filename).suffix.lower()
            if suffix in ARCHIVE_SUFFIXES:
                skipped.append((member.filename, "archive inside the archive (not opened)"))
                continue
            if member.file_size > limits.max_member_bytes:
                skipped.append((member.filename, f"larger than {limits.max_member_bytes >> 20} MB"))
                continue
            if member.compress_size and member.file_size / member.compress_size > limits.max_ratio and member.file_size > 2**20:
                raise UserError(f"{name}: {member.filename!r} expands {member.file_size / member.compress_size:,.0f}-fold; "
                                "this looks like a zip bomb.")
            target = (root / Path(*parts)).resolve()
            if root not in target.parents:
                raise UserError(f"{name} contains an unsafe path {member.filename!r}.")
            copy_zip_member(archive, member, target, name, limits.max_member_bytes)
    return root, skipped


def _class_root(folder: Path) -> Path:
    """Accept both `cats/…, dogs/…` at the top and one wrapping folder `pets/cats/…, pets/dogs/…`."""
    visible = [p for p in folder.iterdir() if not _is_hidden_or_system((p.name,))]
    dirs = [p for p in visible if p.is_dir() and not p.is_symlink()]
    files = [p for p in visible if p.is_file()]
    if len(dirs) == 1 and not files:
        inner = [p for p in dirs[0].iterdir() if p.is_dir() and not _is_hidden_or_system((p.name,))]
        if inner:
            return dirs[0]
    return folder


def read_class_folders(path: str | Path, workdir: str | Path | None = None) -> ClassFolderDataset:
    """A folder (or a zip of one) with one sub-folder of images per class -> files and labels."""
    path = Path(path)
    skipped: list[tuple[str, str]] = []
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise UserError(f"{path.name}: expected a zip of class folders or a folder.")
        if workdir is None:
            raise UserError("internal: a working folder is needed to unpack a zip")
        path, skipped = safe_extract_zip(path, Path(workdir) / "data")
    if not path.is_dir():
        raise UserError(f"{path} is neither a folder nor a zip file.")
    root = _class_root(path)
    dataset = ClassFolderDataset(root=root, skipped=skipped)
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if _is_hidden_or_system((class_dir.name,)) or class_dir.is_symlink():
            continue
        for file in sorted(class_dir.rglob("*")):
            relative = file.relative_to(root)
            if file.is_dir():
                continue
            if file.is_symlink():
                dataset.skipped.append((str(relative), "symbolic link"))
            elif _is_hidden_or_system(relative.parts):
                dataset.skipped.append((str(relative), "hidden or system file"))
            elif file.suffix.lower() not in IMAGE_SUFFIXES:
                dataset.skipped.append((str(relative), f"not an image ({file.suffix or 'no extension'})"))
            else:
                dataset.files.append(file)
                dataset.labels.append(class_dir.name)
    for loose in sorted(p for p in root.iterdir() if p.is_file()):
        if not _is_hidden_or_system((loose.name,)):
            dataset.skipped.append((loose.name, "not inside a class folder"))
    if not dataset.files:
        raise UserError(f"No images found in class folders under {path.name}: expected one sub-folder of images per class.")
    return dataset


def remove_tree(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- what a training upload must satisfy, and the other ways to upload labelled images -----------------

MAX_UPLOAD_BYTES = int(float(os.environ.get("MINILAB_MAX_UPLOAD_MB", 200)) * 2**20)  # per training upload, all files together
MAX_CLASSES = 100  # a confusion matrix and a per-class table stay readable; thousands of classes is a mistake
MIN_PER_CLASS = 2  # one to learn from and one to check on
FILENAME_COLUMNS = ("filename", "file", "image", "path", "name")
IMAGE_LABEL_COLUMNS = ("label", "class", "category", "target")


def check_classes(counts: dict[str, int], what: str = "images") -> None:
    """Refuse data a classifier cannot learn from, naming every problem at once."""
    problems = []
    if len(counts) < 2:
        problems.append(f"found {len(counts)} class ({', '.join(counts) or 'none'}); a classifier needs at least 2")
    if len(counts) > MAX_CLASSES:
        problems.append(f"found {len(counts):,} classes; the limit is {MAX_CLASSES} (is the label column right?)")
    small = [f"{name!r} ({n})" for name, n in counts.items() if n < MIN_PER_CLASS]
    if small and len(counts) <= MAX_CLASSES:
        shown = ", ".join(small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else "")
        problems.append(f"each class needs at least {MIN_PER_CLASS} {what} (one to learn from, one to check on); too few in {shown}")
    if problems:
        raise UserError("Cannot train on this upload: " + "; ".join(problems) + ".")


def check_upload_size(paths: list[Path], limit: int | None = None) -> None:
    limit = MAX_UPLOAD_BYTES if limit is None else limit
    total = sum(p.stat().st_size for p in paths if p.is_file())
    if total > limit:
        raise UserError(f"The upload is {total / 2**20:,.1f} MB; the limit is {limit / 2**20:,.0f} MB "
                        "(a Space operator can change it with MINILAB_MAX_UPLOAD_MB).")


def read_images_with_csv(images: list[Path], csv_path: Path) -> ClassFolderDataset:
    """Loose images plus a CSV of filename,label (files are matched by name, ignoring folders and case)."""
    import csv
    import io

    from engine.text.data import decode_bytes

    text = decode_bytes(csv_path.read_bytes()[: 20 * 2**20], csv_path.name)
    dialect = "excel-tab" if text.split("\n", 1)[0].count("\t") > text.split("\n", 1)[0].count(",") else "excel"
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), dialect=dialect))
    except csv.Error as error:
        raise UserError(f"{csv_path.name} is not a readable CSV file ({error}).") from error
    if not rows:
        raise UserError(f"{csv_path.name} is empty: expected a header row such as filename,label.")
    header = [cell.strip().lower() for cell in rows[0]]
    file_col = next((header.index(c) for c in FILENAME_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in IMAGE_LABEL_COLUMNS if c in header), None)
    if file_col is None or label_col is None:
        missing = [what for what, col in (("filename column (filename, file, image or path)", file_col),
                                          ("label column (label, class or category)", label_col)) if col is None]
        raise UserError(f"{csv_path.name} has no {' and no '.join(missing)}; its header is {', '.join(rows[0]) or 'empty'}.")
    by_name = {path.name.lower(): path for path in images}
    dataset = ClassFolderDataset(root=csv_path.parent)
    listed = set()
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(file_col, label_col):
            dataset.skipped.append((f"{csv_path.name} row {number}", "too few columns"))
            continue
        name, label = PurePosixPath(row[file_col].strip().replace("\\", "/")).name, row[label_col].strip()
        if not label:
            dataset.skipped.append((f"{csv_path.name} row {number}", "no label"))
        elif name.lower() not in by_name:
            dataset.skipped.append((f"{csv_path.name} row {number}", f"{name!r} was not uploaded"))
        else:
            listed.add(name.lower())
            dataset.files.append(by_name[name.lower()])
            dataset.labels.append(label)
    for path in images:
        if path.name.lower() not in listed:
            dataset.skipped.append((path.name, f"not listed in {csv_path.name}"))
    if not dataset.files:
        raise UserError(f"None of the uploaded images is listed in {csv_path.name}.")
    return dataset


def read_image_upload(paths: list[str | Path], workdir: str | Path) -> ClassFolderDataset:
    """What the fine-tune tab and `finetune image` accept: a zip (or folder) of class folders, a zip of
    images with a filename,label CSV inside, or several images plus such a CSV. Unpacks into workdir."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("Upload a zip of class folders, or images together with a CSV of filename,label.")
    check_upload_size(paths)
    if len(paths) == 1 and (paths[0].is_dir() or paths[0].suffix.lower() == ".zip"):
        root = paths[0]
        skipped: list[tuple[str, str]] = []
        if root.is_file():
            root, skipped = safe_extract_zip(root, Path(workdir) / "data")
        root = _class_root(root)
        tables = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tsv")
                  and not _is_hidden_or_system((p.name,))]
        if len(tables) == 1:  # a labels CSV beside the images (in any sub-folders) says which class each one is
            images = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not _is_hidden_or_system(p.relative_to(root).parts)]
            dataset = read_images_with_csv(images, tables[0])
        else:
            dataset = read_class_folders(root)
        dataset.skipped = skipped + dataset.skipped
        return dataset
    tables = [p for p in paths if p.suffix.lower() in (".csv", ".tsv")]
    images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in paths if p not in tables and p not in images]
    if len(tables) != 1:
        raise UserError("With loose images, also upload exactly one CSV of filename,label "
                        f"(got {len(tables)}); or upload one zip of class folders.")
    if not images:  # most likely labelled text, sent to the image reader
        raise UserError(f"{tables[0].name} came without any images. For images, upload them with a CSV of "
                        "filename,label, or one zip of class folders; a CSV of texts and labels trains a text classifier.")
    dataset = read_images_with_csv(images, tables[0])
    dataset.skipped += [(p.name, "neither an image nor the CSV") for p in others]
    return dataset
