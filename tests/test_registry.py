"""The model registry: offline answers, lazy loading, the cache bound, session isolation, and the real
hub loading code exercised on tiny models the tests create and save locally."""
import socket
import time

import pytest
import torch

from engine import registry as registry_module
from engine.errors import UserError
from engine.registry import ModelEntry, Registry, build_default_registry, hf_image_entry


@pytest.fixture(autouse=True)
def forget_reachability():
    registry_module._reach.checked_at.clear()
    registry_module._reach.answer.clear()
    yield
    registry_module._reach.checked_at.clear()
    registry_module._reach.answer.clear()


def test_shipped_models_are_listed_and_available():
    registry = build_default_registry()
    names = [entry.name for entry in registry.list("image-classification")]
    assert "mnist" in names and "cifar10" in names
    assert registry.availability("mnist") == (True, "shipped with minilab")


def test_hub_models_unavailable_offline_with_reason_and_quickly(monkeypatch):
    monkeypatch.setenv("MINILAB_OFFLINE", "1")
    registry = build_default_registry()
    started = time.perf_counter()
    hub = [entry for entry in registry.list("image-classification") if entry.source == "hub"]
    assert hub, "the hub models should be listed even offline"
    for entry in hub:
        ok, why = registry.availability(entry.name)
        assert not ok and "offline" in why
    assert time.perf_counter() - started < 5
    with pytest.raises(UserError, match="unavailable"):
        registry.get(hub[0].name)


def test_reachability_check_gives_up_within_seconds(monkeypatch):
    monkeypatch.delenv("MINILAB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def hangs(*args, **kwargs):  # like a DNS lookup that hangs offline, then times out
        time.sleep(30)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    started = time.perf_counter()
    ok, why = registry_module.host_reachable("https://hub.example")
    assert not ok and "did not answer" in why
    assert time.perf_counter() - started < registry_module.REACHABILITY_TIMEOUT + 1.5


def test_an_unreachable_host_is_explained_in_words(monkeypatch):
    """The System tab said "huggingface.co unreachable (gaierror)"."""
    monkeypatch.delenv("MINILAB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    assert registry_module.host_reachable("https://hub.example") == (
        False, "hub.example unreachable (its name could not be looked up: no network or no DNS)")


def test_lazy_loading_happens_once_and_cache_is_bounded():
    calls = []

    def loader(name):
        def load():
            calls.append(name)
            return torch.nn.Linear(256, 256)  # about 0.25 MB

        return load

    registry = Registry(max_cache_mb=0.3)
    for name in ("a", "b"):
        registry.add(ModelEntry(name=name, task="t", source="shipped", description="", load=loader(name)))
    assert calls == []  # nothing loads before use
    first = registry.get("a")
    assert registry.get("a") is first and calls == ["a"]
    registry.get("b")  # pushes "a" out: only one fits
    assert [row["model"] for row in registry.loaded()] == ["b"]
    registry.get("a")
    assert calls == ["a", "b", "a"]


def test_session_models_are_private():
    registry = Registry()
    registry.add(ModelEntry(name="mine", task="t", source="session", description="", load=lambda: object(), session="alice"))
    assert [e.name for e in registry.list("t", "alice")] == ["mine"]
    assert registry.list("t", "bob") == []
    with pytest.raises(UserError):
        registry.get("mine", "bob")
    registry.remove_session("alice")
    assert registry.list("t", "alice") == []


def test_a_session_model_whose_folder_was_deleted_is_forgotten(tmp_path):
    registry = Registry()
    kept, pruned = tmp_path / "kept", tmp_path / "pruned"
    kept.mkdir(), pruned.mkdir()
    for name, folder in (("kept", kept), ("pruned", pruned)):
        registry.add(ModelEntry(name=name, task="t", source="session", description="", load=lambda: object(),
                                session="alice", folder=folder))
    registry.get("pruned", "alice")  # loaded: its memory must be freed too
    pruned.rmdir()
    registry.forget_missing("bob")  # another session's call touches nothing of alice's
    assert [e.name for e in registry.list("t", "alice")] == ["kept", "pruned"]
    registry.forget_missing("alice")
    assert [e.name for e in registry.list("t", "alice")] == ["kept"]
    assert registry.loaded() == []


def test_transformers_image_classifier_loads_from_local_folder(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=3, id2label={0: "apple", 1: "pear", 2: "plum"},
                       label2id={"apple": 0, "pear": 1, "plum": 2})
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    registry = Registry()
    registry.add(hf_image_entry(str(tmp_path)))
    assert registry.availability(str(tmp_path)) == (True, "local folder")
    classifier = registry.get(str(tmp_path))
    result = classifier.classify(torch.zeros(3, 50, 40).numpy().transpose(1, 2, 0))
    assert set(result["top"]) == {"apple", "pear", "plum"}
    assert abs(sum(result["top"].values()) - 1) < 1e-5

    from engine.vision.explain import grad_cam

    heat = grad_cam(classifier, result["input"], result["class_index"])
    assert heat.shape == (32, 32)


def test_torchvision_classifier_loads_cached_weights(tmp_path, monkeypatch):
    """The real weights-API path, with a cache we fill ourselves (random weights under the expected name)."""
    import torchvision

    from engine.vision.classify import TorchvisionClassifier, torchvision_weights_cached

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    assert not torchvision_weights_cached(weights)
    with pytest.raises(UserError, match="not in the local cache"):
        TorchvisionClassifier("mobilenet_v3_small")
    (tmp_path / "checkpoints").mkdir()
    model = torchvision.models.mobilenet_v3_small(num_classes=1000)
    torch.save(model.state_dict(), tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    classifier = TorchvisionClassifier("mobilenet_v3_small")
    assert len(classifier.labels) == 1000 and classifier.labels[0] == "tench"
    result = classifier.classify(torch.rand(64, 80, 3).mul(255).byte().numpy())
    assert len(result["top"]) == 5


def test_a_session_model_says_it_was_made_in_this_session_not_shipped():
    """The System tab's "why" column: a fine-tune is the user's own, not part of minilab."""
    from engine.registry import CHECKPOINTS_DIR, model_entry_for_folder

    registry = Registry()
    registry.add(model_entry_for_folder(CHECKPOINTS_DIR / "mnist", "my-digits", "session", session="alice"))
    registry.add(model_entry_for_folder(CHECKPOINTS_DIR / "mnist", "mnist", "shipped"))
    assert registry.availability("my-digits", "alice") == (True, "made in this session")
    assert registry.availability("mnist") == (True, "shipped with minilab")


def test_descriptions_give_each_kind_of_model_its_own_figure():
    """The System tab's description column: accuracy for classifiers, nats per character only for language models,
    the test return for the agent."""
    registry = build_default_registry()
    describe = {entry.name: entry.description for task in ("image-classification", "lm", "rl") for entry in registry.list(task)}
    assert "Validation accuracy" in describe["mnist"] and "nats per character" not in describe["mnist"]
    assert "nats per character" in describe["shakespeare"]
    assert describe["cartpole"].startswith("A DQN agent for CartPole-v1") and "Mean return 500.0 over 100 test episodes" in describe["cartpole"]
