"""The character LSTM: truncated backpropagation's batches, training, evaluation, sampling, saving, fine-tuning."""
from __future__ import annotations

import json

import pytest
import torch

from engine.errors import UserError
from engine.text import charlstm
from engine.text.chargpt import CharTokenizer

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 120


def tiny(vocab: int = 20, hidden: int = 16, layers: int = 2) -> charlstm.CharLSTM:
    torch.manual_seed(0)
    return charlstm.CharLSTM(charlstm.CharLSTMConfig(vocab_size=vocab, n_embd=8, hidden=hidden, n_layer=layers, dropout=0.0))


def test_stream_batches_continue_the_same_streams():
    ids = torch.arange(1000)
    batches = list(charlstm.stream_batches(ids, batch_size=4, seq_len=10))
    (x0, y0), (x1, _) = batches[0], batches[1]
    assert x0.shape == (4, 10) and torch.equal(y0, x0 + 1)  # targets are the next characters
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # the next batch picks up each stream where it stopped
    assert len({int(row[0]) for row in x0}) == 4  # four different places in the text


def test_training_learns_and_keeps_its_best_model():
    config = charlstm.CharLSTMTrainConfig(model=charlstm.CharLSTMConfig(n_embd=8, hidden=32, n_layer=1, dropout=0.0),
                                          max_iters=60, batch_size=8, seq_len=32, lr=1e-2, eval_every=20, warmup_iters=5)
    events = []
    model, tokenizer, metrics = charlstm.train_charlstm(TEXT, config, on_progress=events.append)
    assert tokenizer.chars == "".join(sorted(set(TEXT)))
    assert metrics["iters"] == 60 and metrics["val_loss"] < 1.5  # a repetitive text: far below log(vocab) = 2.8
    assert [e["iter"] for e in events] == [0, 20, 40, 60]
    assert events[-1]["val_loss"] < events[0]["val_loss"]


def test_training_stops_when_asked():
    config = charlstm.CharLSTMTrainConfig(model=charlstm.CharLSTMConfig(n_embd=8, hidden=8, n_layer=1), max_iters=10_000,
                                          batch_size=4, seq_len=16)
    calls = []
    _, _, metrics = charlstm.train_charlstm(TEXT, config, should_stop=lambda: len(calls.append(1) or calls) > 5)
    assert metrics["stopped_early"] and metrics["iters"] < 10


def test_a_text_too_short_is_a_message():
    config = charlstm.CharLSTMTrainConfig(model=charlstm.CharLSTMConfig(), seq_len=128)
    with pytest.raises(UserError, match="too short"):
        charlstm.train_charlstm("abc" * 20, config)


def test_evaluation_scores_every_character_once_and_matches_a_plain_pass():
    model = tiny(vocab=5).eval()
    ids = torch.randint(5, (600,), generator=torch.Generator().manual_seed(1))
    result = charlstm.evaluate_text(model, ids, streams=4, warmup=50)
    assert result["n_chars"] == 599
    with torch.no_grad():  # one stream, no warm-up needed: the same characters, each with all its context
        logits, _, _ = model(ids[:-1].unsqueeze(0))
        plain = float(torch.nn.functional.cross_entropy(logits[0], ids[1:]))
    assert abs(result["val_loss"] - plain) < 0.05  # streams start 50 characters early, so nearly the same context


def test_generation_is_seeded_and_stops_at_once():
    model = tiny(vocab=4)
    tokenizer = CharTokenizer("ab c")
    first = "".join(c for c, _ in charlstm.generate(model, tokenizer, "ab", 50, seed=3))
    again = "".join(c for c, _ in charlstm.generate(model, tokenizer, "ab", 50, seed=3))
    assert first == again and len(first) == 50 and set(first) <= set("ab c")
    stopped = list(charlstm.generate(model, tokenizer, "ab", 50, should_stop=lambda: True))
    assert stopped == []


def test_save_and_load_give_the_same_model(tmp_path):
    model = tiny(vocab=4).eval()
    tokenizer = CharTokenizer("ab c")
    metrics = {"val_loss": 1.0, "history": [{"iter": 0, "elapsed": 0.0, "val_loss": 1.4, "train_loss": 1.5}]}
    folder = charlstm.save_charlstm(model, tokenizer, tmp_path / "m", "m", metrics, {}, "a test")
    card = json.loads((folder / "card.json").read_text())
    assert card["architecture"] == "charlstm" and card["curve"] == [{"iter": 0, "elapsed": 0.0, "val_loss": 1.4}]
    loaded, loaded_tokenizer, _ = charlstm.load_charlstm(folder)
    x = torch.tensor([[0, 1, 2, 3, 0]])
    assert loaded_tokenizer.chars == "ab c"
    assert torch.allclose(loaded(x)[0], model(x)[0], atol=1e-2)  # stored as float16


def test_the_text_tab_and_cli_load_an_lstm_like_a_gpt(tmp_path):
    from engine.text.generate import CharLSTMLM, SamplingSettings, load_char_lm

    folder = charlstm.save_charlstm(tiny(vocab=4), CharTokenizer("ab c"), tmp_path / "lstm", "lstm", {"val_loss": 1.0}, {}, "a test")
    lm = load_char_lm(folder)
    assert isinstance(lm, CharLSTMLM) and lm.unknown_characters("abz") == ["z"]
    text = "".join(piece for piece, _ in lm.stream("ab", SamplingSettings(max_new_tokens=20, seed=1)))
    assert len(text) == 20
    assert lm.evaluate("ab c ab c ab c")["n_chars"] == 13


def test_fine_tune_an_lstm_on_a_txt_and_continue_one_with_new_characters(tmp_path):
    from engine.text.finetune import CharFinetuneConfig, finetune_chargpt, grow_vocabulary

    book = tmp_path / "book.txt"
    book.write_text(TEXT, encoding="utf-8")
    config = CharFinetuneConfig(architecture="lstm", time_budget=2, hidden=32, n_layer=1, batch_size=8, block_size=32,
                                sample_chars=30)
    result = finetune_chargpt([book], config, tmp_path / "out")
    assert result["metrics"]["architecture"] == "lstm" and len(result["sample"]) == 30
    assert json.loads((tmp_path / "out" / "card.json").read_text())["architecture"] == "charlstm"
    model, tokenizer, _ = charlstm.load_charlstm(tmp_path / "out")
    grown, grown_tokenizer = grow_vocabulary(model, tokenizer, TEXT + "Z!")
    assert grown_tokenizer.chars == tokenizer.chars + "!Z"
    assert grown.config.vocab_size == model.config.vocab_size + 2
    assert torch.equal(grown.embed.weight[: model.config.vocab_size], model.embed.weight)
    assert torch.equal(grown.head.bias[: model.config.vocab_size], model.head.bias)
    with pytest.raises(UserError, match="gpt or an lstm"):
        CharFinetuneConfig(architecture="rnn").validate()


def test_cli_trains_the_shipped_lstm_recipe_with_a_clear_error_without_data(tmp_path, capsys):
    from engine.__main__ import main

    assert main(["train", "shakespeare-lstm", "--data-dir", str(tmp_path), "--max-iters", "1", "--json"]) == 2
    assert "error" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_sampling_steps_give_the_same_text_as_the_whole_network():
    """generate() steps through fused gate layers; re-running nn.LSTM over the whole text must sample the same."""
    from engine.text.chargpt import filter_logits

    model = tiny(vocab=4, hidden=24).eval()
    tokenizer = CharTokenizer("ab c")
    stepped = "".join(c for c, _ in charlstm.generate(model, tokenizer, "ab", 40, temperature=1.0, seed=7))
    generator, ids = torch.Generator().manual_seed(7), tokenizer.encode("ab")
    reference = ""
    with torch.no_grad():
        for _ in range(40):
            logits = model(torch.tensor([ids]))[0][0, -1]
            next_id = int(torch.multinomial(filter_logits(logits, 1.0, 0, 1.0), 1, generator=generator))
            reference += tokenizer.chars[next_id]
            ids.append(next_id)
    assert stepped == reference
    from engine.device import quantize_for_cpu

    int8 = quantize_for_cpu(charlstm.step_layers(model))
    probabilities = [p for _, p in charlstm.generate(model, tokenizer, "ab", 20, seed=7, layers=int8)]
    exact = [p for _, p in charlstm.generate(model, tokenizer, "ab", 20, seed=7)]
    assert max(abs(a - b) for a, b in zip(probabilities, exact)) < 0.02
