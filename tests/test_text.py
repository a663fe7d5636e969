"""The text engine: file parsing, the character GPT (shapes, cached sampling, training, checkpoints), the LoRA
text classifier (adapter round trip, explanations, truncation), Hugging Face loading code on tiny local models,
and the eval CLIs on tiny files written here. No ../shared, no network."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from engine.errors import UserError
from engine.text.chargpt import (CharGPT, CharGPTConfig, CharTokenizer, CharTrainConfig, evaluate_text, filter_logits,
                                 generate, load_chargpt, save_chargpt, train_chargpt)
from engine.text.data import decode_bytes, parse_labelled_text, read_labelled_text
from tests.test_cli import run_cli

TEXT = "the cat sat on the mat.\nthe dog sat on the log.\n" * 40


def tiny_gpt(vocab: int, block: int = 16, seed: int = 0) -> CharGPT:
    torch.manual_seed(seed)
    return CharGPT(CharGPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, dropout=0.0)).eval()


# ---------------------------------------------------------------------------------------------------------- files


def test_tsv_and_csv_with_label_names_and_skipped_rows():
    table = parse_labelled_text("label\tsentence\n1\tgreat film\n0\tdull \" plot\n\n1\t\n", "t.tsv", sentiment=True)
    assert table.texts == ["great film", 'dull " plot'] and table.labels == ["positive", "negative"]
    assert table.skipped == ["row 5: empty text"]
    table = parse_labelled_text('text,category\n"a, b",sports\nc,politics\n', "t.csv")
    assert table.texts == ["a, b", "c"] and table.classes == ["politics", "sports"]


def test_missing_columns_are_named():
    with pytest.raises(UserError, match="no label column.*'sentence', 'stars', 'date'"):
        parse_labelled_text("sentence,stars,date\nok,5,today\n", "x.csv")
    with pytest.raises(UserError, match="no text column"):
        parse_labelled_text("label,score,date\n1,2,today\n", "x.csv")


def test_two_columns_with_one_known_name_are_text_and_label():
    table = parse_labelled_text("review,verdict\ngreat,liked\n", "x.csv")
    assert (table.text_column, table.label_column, table.labels) == ("review", "verdict", ["liked"])
    table = parse_labelled_text("stars\tcomment\n5\tlovely\n", "x.tsv")
    assert (table.text_column, table.label_column, table.texts) == ("comment", "stars", ["lovely"])
    with pytest.raises(UserError, match="empty"):
        parse_labelled_text("", "x.csv")


def test_two_columns_without_a_header_or_with_unknown_names():
    """UCI's sentiment files have no header ("sentence<TAB>0"): the first line is a row, as its label recurs below."""
    table = parse_labelled_text("So good.\t1\nBroke at once.\t0\nLove it\t1\n\t0\nMeh.\t0\n", "amazon.txt")
    assert (table.text_column, table.label_column) == ("column 1", "column 2")
    assert table.texts == ["So good.", "Broke at once.", "Love it", "Meh."] and table.labels == ["1", "0", "1", "0"]
    assert table.skipped == ["row 4: empty text"]  # the file's own line number
    table = parse_labelled_text('pos,"great, really"\nneg,awful\npos,loved it\nneg,dull\n', "x.csv", sentiment=True)
    assert table.text_column == "column 2" and table.labels == ["positive", "negative", "positive", "negative"]
    # names it does not know: the column that repeats its values is the label; a header names no value of its column
    table = parse_labelled_text("tweet,polarity\nhappy days,1\nso sad,0\nfine,1\nugh,0\n", "x.csv")
    assert (table.text_column, table.label_column, table.texts[0]) == ("tweet", "polarity", "happy days")
    # UCI's IMDb file: the first line has four commas and one tab, every line has one tab
    table = parse_labelled_text("A very, very, very slow-moving, aimless movie.  \t0\nNot sure who was more lost.  \t0\n"
                                "Great fun, truly.\t1\nLoved it.\t1\n", "imdb_labelled.txt")
    assert table.texts[0] == "A very, very, very slow-moving, aimless movie." and table.labels == ["0", "0", "1", "1"]
    with pytest.raises(UserError, match="no text column"):  # values that do not tell: every one differs
        parse_labelled_text("tweet,polarity\nhappy days,1\nso sad,0\n", "x.csv")


def test_encodings_and_binary(tmp_path: Path):
    content = "label\ttext\n1\tcafé crème\n"
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "cp1252"):
        path = tmp_path / f"{encoding}.tsv"
        path.write_bytes(content.encode(encoding))
        assert read_labelled_text(path).texts == ["café crème"], encoding
    with pytest.raises(UserError, match="binary"):
        decode_bytes(b"PK\x03\x04\x00\x00binary", "x.zip")


# ---------------------------------------------------------------------------------------------------------- char GPT


def test_tokenizer_round_trip_and_unknown_characters():
    tokenizer = CharTokenizer.from_text("hello world")
    assert tokenizer.decode(tokenizer.encode("hello")) == "hello"
    assert tokenizer.unknown("héllo!") == ["!", "é"]
    assert tokenizer.decode(tokenizer.encode("h!")) == "h "  # unseen characters read as a space


def test_chargpt_shapes_and_initial_loss():
    model = tiny_gpt(vocab=20)
    x, y = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(0)), torch.randint(0, 20, (3, 16))
    with torch.no_grad():
        logits, loss = model(x, y)
    assert logits.shape == (3, 16, 20) and loss.shape == ()
    assert abs(float(loss) - math.log(20)) < 0.3  # an untrained model guesses uniformly


def test_cached_and_uncached_sampling_agree_within_the_context():
    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(len(tokenizer.chars), block=32)
    kwargs = dict(max_new_chars=26, temperature=1.0, seed=5)
    cached = "".join(c for c, _ in generate(model, tokenizer, "the ", use_cache=True, **kwargs))
    uncached = "".join(c for c, _ in generate(model, tokenizer, "the ", use_cache=False, **kwargs))
    assert cached == uncached and len(cached) == 26
    with torch.no_grad():  # and the cached logits equal a full forward pass
        ids = torch.tensor([tokenizer.encode("the cat sat")])
        full, _ = model(ids)
        caches = [[] for _ in model.blocks]
        model(ids[:, :-1], caches=caches)
        step, _ = model(ids[:, -1:], start=ids.shape[1] - 1, caches=caches)
    assert torch.allclose(full[0, -1], step[0, -1], atol=1e-5)


def test_rolling_cache_generates_past_the_context_and_stops_on_request():
    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(len(tokenizer.chars), block=8)
    out = list(generate(model, tokenizer, "x" * 50, max_new_chars=40, seed=1))  # x is unknown: read as a space
    assert len(out) == 40 and all(0 <= p <= 1 for _, p in out)
    calls = []
    stopped = list(generate(model, tokenizer, "the", max_new_chars=100, should_stop=lambda: len(calls.append(1) or calls) > 5))
    assert len(stopped) == 5


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert (filter_logits(logits, 1.0, 2, 1.0) > 0).tolist() == [True, True, False, False]
    probs = filter_logits(logits, 1.0, 0, 0.5)  # the top token alone holds 64% of the mass
    assert probs.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert abs(float(filter_logits(logits, 0.7, 0, 1.0).sum()) - 1) < 1e-6


def test_evaluate_scores_every_character_once():
    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(len(tokenizer.chars), block=16)
    ids = torch.tensor(tokenizer.encode(TEXT[:101]))
    result = evaluate_text(model, ids)
    assert result["n_chars"] == 100
    assert evaluate_text(model, ids[:5])["n_chars"] == 4  # shorter than the context


def test_training_lowers_the_loss_and_checkpoint_round_trip(tmp_path: Path):
    config = CharTrainConfig(model=CharGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0),
                             max_iters=150, batch_size=16, lr=3e-3, warmup_iters=10, eval_every=50, eval_batches=2)
    model, tokenizer, metrics = train_chargpt(TEXT, config)
    assert metrics["val_loss"] < 1.5 < math.log(len(tokenizer.chars))  # far below guessing
    assert [h["iter"] for h in metrics["history"]] == [0, 50, 100, 150]
    folder = save_chargpt(model, tokenizer, tmp_path / "lm", "lm", metrics, {"max_iters": 150}, "a test text")
    loaded, loaded_tokenizer, card = load_chargpt(folder)
    assert loaded_tokenizer.chars == tokenizer.chars and card["task"] == "lm"
    x = torch.tensor([tokenizer.encode("the cat")])
    with torch.no_grad():  # weights are stored as float16: the same logits to about 1e-3
        assert torch.allclose(model(x)[0], loaded(x)[0], atol=1e-2)
        assert (model(x)[0].argmax(-1) == loaded(x)[0].argmax(-1)).all()


def test_training_refuses_too_short_text():
    with pytest.raises(UserError, match="too short"):
        train_chargpt("abc", CharTrainConfig(model=CharGPTConfig(block_size=16)))


# ---------------------------------------------------------------------------------------------------------- classifier

SENTENCES = ["a wonderful , moving film", "great acting and a clever plot", "i loved every minute", "pure joy",
             "a dull , lifeless mess", "boring and far too long", "i hated it", "a waste of time"]
LABELS = ["positive"] * 4 + ["negative"] * 4


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    from engine.text.classify import TextTrainConfig, save_text_classifier, train_text_classifier

    config = TextTrainConfig(epochs=3, batch_size=4, lr=3e-3, lora_r=2, eval_every=1000)
    model, labels, metrics = train_text_classifier(SENTENCES, LABELS, SENTENCES[:2], LABELS[:2], config)
    folder = save_text_classifier(model, labels, tmp_path_factory.mktemp("text") / "tiny-sentiment", "tiny-sentiment",
                                  "sentiment", metrics, {"epochs": 3}, "eight sentences written in the test")
    return model, labels, folder


@pytest.mark.parametrize("scores, keep, kept", [
    ([0.99, 0.94], "last", 0.94),  # the fine-tune keeps the model where its schedule ends, whatever validation says
    ([0.94, 0.95], "last", 0.95),
    ([0.95, 0.94], "best", 0.95),  # the default keeps the best pass
    ([0.94, 0.95], "best", 0.95),
])
def test_which_validation_pass_is_kept(monkeypatch, scores, keep, kept):
    import engine.text.classify as classify

    passes = iter(scores)
    monkeypatch.setattr(classify, "evaluate_predictor", lambda *args: {"accuracy": next(passes)})
    states = []
    monkeypatch.setattr(classify.TextClassifier, "load_saved_state", lambda self, state: states.append(state))
    config = classify.TextTrainConfig(epochs=2, batch_size=4, lora_r=2, eval_every=2, keep=keep)
    val_texts, val_labels = ["a", "b"] * 50, ["positive", "negative"] * 50  # 100 rows, scored by the scripted passes
    _, _, metrics = classify.train_text_classifier(SENTENCES, LABELS, val_texts, val_labels, config)
    assert [h["step"] for h in metrics["history"]] == [2, 4]  # 8 sentences in batches of 4, two epochs
    assert metrics["val_accuracy"] == kept
    assert len(states) == (0 if kept == scores[-1] else 1)  # an earlier state is loaded only when it is kept


def test_a_stopped_run_keeps_its_best_pass_even_when_told_to_keep_the_last(monkeypatch):
    from engine.text import classify

    scores, scored = iter([0.99, 0.94]), []

    def scripted_pass(*args) -> dict:
        scored.append(next(scores))
        return {"accuracy": scored[-1]}

    monkeypatch.setattr(classify, "evaluate_predictor", scripted_pass)
    states = []
    monkeypatch.setattr(classify.TextClassifier, "load_saved_state", lambda self, state: states.append(state))
    config = classify.TextTrainConfig(epochs=2, batch_size=4, lora_r=2, eval_every=2, keep="last")
    val_texts, val_labels = ["a", "b"] * 50, ["positive", "negative"] * 50
    _, _, metrics = classify.train_text_classifier(SENTENCES, LABELS, val_texts, val_labels, config,
                                                   should_stop=lambda: len(scored) >= 1)  # stop once a pass is scored
    assert [h["step"] for h in metrics["history"]] == [2, 3]  # stopped a step later, scored where it stopped
    assert metrics["val_accuracy"] == 0.99 and len(states) == 1


def test_blending_two_adapters_is_one_adapter_of_twice_the_rank():
    """WiSE-FT's blend of the starting and the fine-tuned model, written as one LoRA adapter: once merged, its
    weights are exactly the blend of the two models' merged weights."""
    from engine.text.classify import TextClassifier
    from engine.text.finetune import blend_with_start

    arch = {"base": "package:all-MiniLM-L6-v2", "method": "lora", "n_labels": 2, "lora_r": 2, "lora_alpha": 4,
            "lora_targets": ["query", "dense"]}
    generator = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in TextClassifier(arch).saved_state().items()}
    start, tuned = ({k: torch.randn(shape, generator=generator) * 0.1 for k, shape in shapes.items()} for _ in range(2))

    def merged(arch: dict, state: dict) -> dict:
        model = TextClassifier(arch)
        model.load_saved_state(state)
        return model.merged().state_dict()

    blended_arch, blended = blend_with_start(arch, start, tuned, start_weight=0.3)
    assert (blended_arch["lora_r"], blended_arch["lora_alpha"]) == (4, 8)
    expected_start, expected_tuned, got = merged(arch, start), merged(arch, tuned), merged(blended_arch, blended)
    assert got.keys() == expected_start.keys()
    for key in got:
        assert torch.allclose(got[key], 0.3 * expected_start[key] + 0.7 * expected_tuned[key], atol=1e-5), key


def test_lora_adapter_round_trip_through_a_checkpoint(lora_model):
    from safetensors.torch import load_file

    from engine.text.classify import TextPredictor, load_text_classifier

    model, labels, folder = lora_model
    saved = load_file(folder / "weights.safetensors")
    assert saved and all("lora_" in k or k.startswith("head.") for k in saved)  # adapters and head only
    assert (folder / "weights.safetensors").stat().st_size < 2_000_000
    from transformers import AutoTokenizer

    from engine.text.classify import base_folder

    before = TextPredictor(model, AutoTokenizer.from_pretrained(base_folder("package:all-MiniLM-L6-v2")), labels).predict_proba(SENTENCES)
    after = load_text_classifier(folder, quantize=False).predict_proba(SENTENCES)  # merged adapters: same numbers
    assert labels == ["negative", "positive"]
    assert abs(before - after).max() < 1e-4
    quantized = load_text_classifier(folder).predict_proba(SENTENCES)  # int8 on the CPU: close, not equal
    assert abs(before - quantized).max() < 0.05


def test_served_text_classifier_runs_as_a_checked_graph(lora_model):
    """On the CPU a text classifier is served as a TorchScript graph (fewer trips through Python's lock under load):
    the same probabilities as the eager model for batch sizes and lengths other than the traced ones, and a model
    whose traced graph would compute something else is served eagerly instead."""
    from engine.text.classify import load_text_classifier, trace_for_cpu

    predictor = load_text_classifier(lora_model[2])
    assert predictor.graph is not None
    texts = ["ok", "a warm , funny and beautifully acted film", "terrible " * 300, "not bad at all , really not bad"]
    traced = predictor.predict_proba(texts, batch_size=3)
    predictor.graph = None
    assert abs(traced - predictor.predict_proba(texts, batch_size=3)).max() < 1e-5

    class LengthBranch(torch.nn.Module):  # Python control flow on a shape: tracing would freeze one branch
        def forward(self, input_ids, attention_mask):
            return input_ids[:, :2].float() * (2.0 if input_ids.shape[1] > 8 else 1.0)

    assert trace_for_cpu(LengthBranch(), predictor.tokenizer) is None


def test_batches_spread_over_cpu_threads_give_the_same_rows_in_order(lora_model):
    """With two threads to use, a predictor runs its batches on two one-thread workers: each text keeps its
    own row, and the numbers equal one worker's (float model: batches do not interact)."""
    import threading
    import time

    from engine.text.classify import load_text_classifier

    predictor = load_text_classifier(lora_model[2], quantize=False)
    texts = [f"{s} {'really ' * (i % 5)}" for i, s in enumerate(SENTENCES * 3)]  # 24 texts, lengths mixed
    seen_threads = set()
    logits = predictor.logits
    # each batch also waits 10 ms, so that the second worker surely starts before the first has done them all
    predictor.logits = lambda batch: (seen_threads.add(threading.get_ident()), time.sleep(0.01), logits(batch))[2]
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = predictor.predict_proba(texts, batch_size=4)
        assert seen_threads == {threading.get_ident()}
        seen_threads.clear()
        torch.set_num_threads(2)
        spread = predictor.predict_proba(texts, batch_size=4)
    finally:
        torch.set_num_threads(previous)
    assert len(seen_threads) == 2 and threading.get_ident() not in seen_threads
    assert abs(alone - spread).max() < 1e-5
    assert (spread.argmax(1) == predictor.predict_proba(texts[::-1], batch_size=4)[::-1].argmax(1)).all()


def test_explanation_and_truncation(lora_model):
    from engine.text.classify import MAX_EXPLAIN_WORDS, load_text_classifier

    predictor = load_text_classifier(lora_model[2])
    result = predictor.explain("a wonderful , moving film")
    assert [w for w, _ in result["words"]] == ["a", "wonderful", ",", "moving", "film"]
    assert result["towards"] == "positive" and set(result["probabilities"]) == {"negative", "positive"}
    long = predictor.explain("good " * 50_000)  # 250,000 characters: capped, truncated, still an answer
    assert len(long["words"]) == MAX_EXPLAIN_WORDS and long["truncated_words"] > 0
    with pytest.raises(UserError, match="empty"):
        predictor.explain("   \n ")
    tokens = predictor.tokenizer(["word " * 5000], truncation=True, max_length=predictor.max_tokens)["input_ids"][0]
    assert len(tokens) == predictor.max_tokens


def test_eval_cli_on_tiny_files(lora_model, tmp_path: Path):
    data = tmp_path / "reviews.csv"
    data.write_text("content,label\n" + "".join(f'"{s}",{l}\n' for s, l in zip(SENTENCES, LABELS)))
    result = run_cli("eval", "sentiment", "--model", str(lora_model[2]), "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n"] == 8 and 0 <= report["accuracy"] <= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("comment,stars,date\nnice,5,today\n")
    result = run_cli("eval", "sentiment", "--model", str(lora_model[2]), "--data", str(bad), "--json")
    assert result.returncode == 2 and "no label column" in result.stderr


def test_eval_lm_cli(tmp_path: Path):
    tokenizer = CharTokenizer.from_text(TEXT)
    folder = save_chargpt(tiny_gpt(len(tokenizer.chars)), tokenizer, tmp_path / "lm", "lm", {}, {}, "none")
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    result = run_cli("eval", "lm", "--model", str(folder), "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = len(TEXT) - int(len(TEXT) * 0.9) - 1
    assert report["n_chars"] == expected and 2 < report["val_loss"] < 4


# ---------------------------------------------------------------------------------------------------------- hub code


@pytest.fixture(scope="module")
def tiny_hub_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT sentiment classifier and a tiny GPT-2, saved as a Hugging Face model folder would be."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    from engine.text.classify import base_folder

    root = tmp_path_factory.mktemp("hub")
    tokenizer = AutoTokenizer.from_pretrained(base_folder("package:all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2,
                                                     id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}))
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    folders = {}
    for name, model in (("classifier", bert), ("lm", gpt)):
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


def test_hub_text_classifier_loading_code(tiny_hub_models):
    from engine.registry import Registry, hf_text_entry

    registry = Registry()
    registry.add(hf_text_entry(str(tiny_hub_models["classifier"]), "sentiment"))
    predictor = registry.get(str(tiny_hub_models["classifier"]))
    assert predictor.labels == ["negative", "positive"]
    assert abs(sum(predictor.predict("what a film").values()) - 1) < 1e-5
    assert len(predictor.explain("what a film")["words"]) == 3


def test_hub_causal_lm_streams_and_stops(tiny_hub_models):
    from engine.text.generate import HFCausalLM, SamplingSettings

    lm = HFCausalLM(str(tiny_hub_models["lm"]))
    pieces = list(lm.stream("hello there", SamplingSettings(max_new_tokens=10, seed=0)))
    assert 1 <= len(pieces) <= 10 and all(isinstance(p, str) and 0 <= q <= 1 for p, q in pieces)
    assert list(lm.stream("hello", SamplingSettings(max_new_tokens=10), should_stop=lambda: True)) == []
    assert lm.evaluate("hello there , general")["val_loss"] > 0


def test_missing_hub_model_is_a_clear_error(tmp_path: Path):
    from engine.text.generate import HFCausalLM

    with pytest.raises(UserError, match="could not be loaded"):
        HFCausalLM(str(tmp_path / "nothing-here"))


def test_sampling_settings_are_checked():
    from engine.text.generate import SamplingSettings

    for bad in (dict(max_new_tokens=0), dict(temperature=0), dict(top_p=0), dict(top_k=-1), dict(seed=-3)):
        with pytest.raises(UserError):
            SamplingSettings(**bad).validate()


def step_and_forward(model: CharGPT, ids: list[int]):
    """(position, step's logits, forward()'s one-position cached logits) for each position after a 3-id prompt."""
    step_caches, forward_caches = [[] for _ in model.blocks], [[] for _ in model.blocks]
    model(torch.tensor([ids[:3]]), caches=step_caches)
    model(torch.tensor([ids[:3]]), caches=forward_caches)
    for position in range(3, len(ids)):
        stepped = model.step(ids[position], position, step_caches)
        cached, _ = model(torch.tensor([[ids[position]]]), start=position, caches=forward_caches)
        yield position, stepped, cached[0, -1]


def test_one_character_step_matches_the_forward_pass():
    """CharGPT.step (the streaming path) is the same maths as forward(): equal to a full forward pass within the
    context, and equal to forward()'s own one-position cached path after the ring cache wraps around (from there
    on, keys made with a longer context are kept, so a plain re-run of the last window differs, by design)."""
    from engine.device import quantize_for_cpu

    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(len(tokenizer.chars), block=8).eval()
    ids = tokenizer.encode((TEXT * 3)[:30])
    with torch.no_grad():
        for position, stepped, cached in step_and_forward(model, ids):
            assert torch.allclose(stepped, cached, atol=1e-6), position
            if position < 8:
                full, _ = model(torch.tensor([ids[: position + 1]]))
                assert torch.allclose(stepped, full[0, -1], atol=1e-5), position
        quantized = quantize_for_cpu(model)  # step calls the int8 operator directly: the same numbers as the modules
        for position, stepped, cached in step_and_forward(quantized, ids):
            assert stepped.shape == (len(tokenizer.chars),) and torch.allclose(stepped, cached, atol=1e-5), position


def test_the_traced_step_samples_what_step_samples():
    """StepGraph (fixed shapes: a masked attention over the whole ring) gives step()'s logits at every position,
    past the point where the ring wraps, and its traced graph the same text for a seed; a stream longer than the
    graph's rotation table falls back to step() on its own."""
    from engine.device import quantize_for_cpu
    from engine.text.chargpt import StepGraph, empty_mask, trace_step

    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(len(tokenizer.chars), block=8)
    ids = tokenizer.encode((TEXT * 3)[:40])
    for served in (model, quantize_for_cpu(model)):
        eager, caches = [[] for _ in model.blocks], [[] for _ in model.blocks]
        with torch.inference_mode():
            served(torch.tensor([ids[:3]]), caches=eager)
            served(torch.tensor([ids[:3]]), caches=caches)
            rings, mask, step = [cache[3] for cache in caches], empty_mask(served, 3), StepGraph(served)
            for position in range(3, len(ids)):
                expected = served.step(ids[position], position, eager)
                # int8: the masked slots change float sums by 1e-7, which may round an activation differently
                atol = 1e-5 if served is model else 0.05 * expected.abs().max().item()
                assert torch.allclose(step(torch.tensor([ids[position], position, position % 8]), mask, rings), expected,
                                      atol=atol), position
    graph = trace_step(model)
    assert isinstance(graph, torch.jit.ScriptModule)
    kwargs = dict(max_new_chars=60, temperature=1.0, seed=4)
    plain = "".join(c for c, _ in generate(model, tokenizer, "the ", **kwargs))
    assert "".join(c for c, _ in generate(model, tokenizer, "the ", step_graph=graph, **kwargs)) == plain
    with torch.inference_mode():
        short = torch.jit.trace(StepGraph(model, positions=16).eval(), (torch.tensor([1, 3, 3]), empty_mask(model, 3), rings),
                                check_trace=False)
    assert "".join(c for c, _ in generate(model, tokenizer, "the ", step_graph=short, **kwargs)) == plain


def test_a_step_that_tracing_would_freeze_gets_no_graph(monkeypatch):
    from engine.text import chargpt

    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_gpt(len(tokenizer.chars), block=8)
    original = chargpt.StepGraph.forward

    def branches_on_a_value(self, where, mask, rings):  # a tracer keeps the branch its one run took
        logits = original(self, where, mask, rings)
        return logits + 1.0 if int(where[1]) % 2 else logits

    monkeypatch.setattr(chargpt.StepGraph, "forward", branches_on_a_value)
    assert chargpt.trace_step(model) is None  # its check against the module fails: no graph rather than a wrong one
    monkeypatch.setattr(chargpt.StepGraph, "forward", original)
    assert chargpt.trace_step(model) is not None
