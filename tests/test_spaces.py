"""minilab as a Hugging Face Space: binaries through LFS/Xet, small files, the Space's Python version, and
deploy_space.py (dry run, and its refusals without token or network)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy_space.py"
MAX_FILE_BYTES = 10_000_000
PYTHON_SOURCES = ["app.py", "deploy_space.py", "engine", "demos", "benchmarks", "tests"]
VERMIN = [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())"]
LISTED = re.compile(r"^\s*[\d.]+ (?:B|kB|MB)  (.+)$")  # a dry run's line: size, two spaces, path
FRONT_MATTER = '---\ntitle: t\nsdk: gradio\nsdk_version: 6.31.0\napp_file: app.py\npython_version: "3.10"\n---\n# t\n'


def git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    """The tracked files present on disk; skips where this is not a git checkout (e.g. an unpacked sdist)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listing = git("ls-files", "-z")
    if listing.returncode != 0:
        pytest.skip(f"not a git checkout: {listing.stderr.strip()}")
    return [path for path in listing.stdout.split("\0") if path and (ROOT / path).is_file()]


def binary_files(files: list[str]) -> list[str]:
    """Tracked files git itself treats as binary: those `git grep -I` (skip binaries) does not list, except empty ones."""
    text = set(git("grep", "-I", "--name-only", "-z", "-e", "").stdout.split("\0"))
    return [path for path in files if path not in text and (ROOT / path).stat().st_size > 0]


def test_every_binary_file_goes_through_lfs(tracked: list[str]) -> None:
    binaries = binary_files(tracked)
    assert any(path.endswith(".safetensors") for path in binaries), binaries  # the check sees the shipped weights
    answer = subprocess.run(["git", "-C", str(ROOT), "check-attr", "-z", "--stdin", "filter"],
                            input="\0".join(binaries) + "\0", capture_output=True, text=True, timeout=60)
    fields = answer.stdout.split("\0")
    filters = {fields[i]: fields[i + 2] for i in range(0, len(fields) - 2, 3)}
    not_lfs = sorted(path for path in binaries if filters.get(path) != "lfs")
    assert not not_lfs, (f"binary files that no LFS pattern of .gitattributes matches: {not_lfs}; the Hub refuses "
                         "binaries outside LFS/Xet. Add a pattern like '*.ext filter=lfs diff=lfs merge=lfs -text'")


def test_no_tracked_file_over_10_mb(tracked: list[str]) -> None:
    too_big = {path: (ROOT / path).stat().st_size for path in tracked if (ROOT / path).stat().st_size > MAX_FILE_BYTES}
    assert not too_big, f"files over 10 MB (the Space deploy refuses them): {too_big}"


def space_python_version() -> str:
    """python_version from README.md's front matter, as the Hub reads it (YAML)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---"), "README.md has no YAML front matter"
    meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    assert "python_version" in meta, ('README.md\'s front matter has no python_version (e.g. python_version: "3.10"): '
                                      "the Space would run the Hub's default Python, not the one the code is checked for")
    version = meta["python_version"]
    assert isinstance(version, str), (f"python_version: {version} is read by YAML as the number {version!r}; quote it, "
                                      'e.g. python_version: "3.10"')
    assert re.fullmatch(r"3\.\d+(\.\d+)?", version), f"python_version {version!r} is not like 3.10 or 3.10.13"
    return ".".join(version.split(".")[:2])


def vermin(target: str, paths: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """vermin exits 1 when a file needs a newer Python than target. --eval-annotations judges annotations as if
    evaluated (Gradio and pydantic do evaluate some), so `X | None` hints count as 3.10 syntax even under
    `from __future__ import annotations`, which the target version supports anyway."""
    pytest.importorskip("vermin", reason="vermin is a dev requirement: pip install -r requirements-dev.txt")
    command = [*VERMIN, f"--target={target}-", "--violations", "--no-tips", "--eval-annotations", "--processes=1",
               *paths]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_code_runs_on_the_spaces_python_version() -> None:
    target = space_python_version()
    result = vermin(target, [path for path in PYTHON_SOURCES if (ROOT / path).exists()], ROOT)
    assert result.returncode == 0, f"code that needs a Python newer than {target}:\n{result.stdout}{result.stderr}"


def test_the_version_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "toml_reader.py").write_text("import tomllib\n")
    (tmp_path / "groups.py").write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    (tmp_path / "fine.py").write_text("from __future__ import annotations\n\ndef f(x: int | None) -> list[str]:\n"
                                      "    return [str(x)]\n")
    result = vermin("3.10", ["toml_reader.py", "groups.py", "fine.py"], tmp_path)
    assert result.returncode != 0
    assert "tomllib" in result.stdout and "except*" in result.stdout and "3.11" in result.stdout, result.stdout
    assert "fine.py" not in result.stdout
    assert vermin("3.10", ["fine.py"], tmp_path).returncode == 0


def deploy(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEPLOY), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)


def listed_paths(output: str) -> list[str]:
    return [match.group(1) for line in output.splitlines() if (match := LISTED.match(line))]


@pytest.fixture
def space_checkout(tmp_path: Path) -> Path:
    """A small git checkout shaped like minilab: README front matter, app.py, an ignored and an untracked file."""
    root = tmp_path / "checkout"
    (root / "checkpoints" / "m").mkdir(parents=True)
    (root / "README.md").write_text(FRONT_MATTER)
    (root / "app.py").write_text("print('hi')\n")
    (root / "checkpoints" / "m" / "weights.safetensors").write_bytes(b"\0" * 1000)
    (root / ".gitignore").write_text("/runs/\n")
    assert git("init", "-q", cwd=root).returncode == 0
    assert git("add", "-A", cwd=root).returncode == 0
    (root / "runs").mkdir()
    (root / "runs" / "ignored.txt").write_text("ignored")
    (root / "untracked.txt").write_text("untracked")
    return root


def test_dry_run_lists_this_checkouts_tracked_files(tracked: list[str]) -> None:
    result = deploy("--space", "someone/minilab", "--dry-run")
    assert result.returncode == 0, result.stderr
    listed = listed_paths(result.stdout)
    weights = [path for path in tracked if re.fullmatch(r"checkpoints/[^/]+/weights\.safetensors", path)]
    assert weights and "app.py" in listed and set(weights) <= set(listed), result.stdout
    assert set(listed) == set(tracked)
    assert not [path for path in listed if path.startswith(("runs/", ".whl/", ".data/")) or "__pycache__" in path]
    assert re.search(rf"^{len(tracked)} files, [\d.]+ (?:kB|MB) \(\d+ bytes\) would be uploaded", result.stdout, re.M)


def test_dry_run_leaves_out_ignored_and_untracked_files(space_checkout: Path) -> None:
    result = deploy("--space", "someone/minilab", "--dry-run", "--root", str(space_checkout))
    assert result.returncode == 0, result.stderr
    assert sorted(listed_paths(result.stdout)) == [".gitignore", "README.md", "app.py",
                                                    "checkpoints/m/weights.safetensors"]
    assert "4 files" in result.stdout and "untracked.txt" in result.stdout  # named in the note, not uploaded


def test_refuses_a_file_over_10_mb(space_checkout: Path) -> None:
    with open(space_checkout / "big.bin", "wb") as big:
        big.truncate(MAX_FILE_BYTES + 1)  # sparse: no 10 MB written
    git("add", "big.bin", cwd=space_checkout)
    result = deploy("--space", "someone/minilab", "--dry-run", "--root", str(space_checkout))
    assert result.returncode == 2 and "big.bin" in result.stderr and "10 MB" in result.stderr, result.stderr


def test_refuses_incomplete_front_matter(space_checkout: Path) -> None:
    (space_checkout / "README.md").write_text(FRONT_MATTER.replace("sdk_version: 6.31.0\n", ""))
    result = deploy("--space", "someone/minilab", "--dry-run", "--root", str(space_checkout))
    assert result.returncode == 2 and "sdk_version" in result.stderr, result.stderr


def no_token_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE")}
    (tmp_path / "hf_home").mkdir()
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), "HF_ENDPOINT": "http://127.0.0.1:9"}


def test_offline_fails_at_once_with_the_reason(space_checkout: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    result = deploy("--space", "someone/minilab", "--token", "hf_fake", "--root", str(space_checkout),
                    env=no_token_env(tmp_path))
    assert time.monotonic() - start < 15
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not reachable" in result.stderr and "127.0.0.1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_token_says_how_to_get_one(space_checkout: Path, tmp_path: Path) -> None:
    result = deploy("--space", "someone/minilab", "--root", str(space_checkout), env=no_token_env(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "token" in result.stderr and "huggingface.co/settings/tokens" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
