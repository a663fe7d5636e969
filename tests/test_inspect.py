"""The Inspect views: the LSTM's step-by-step equations against nn.LSTM, the GPT's explicit attention against its
forward pass, the cell search on a cell planted by hand, and `python -m engine inspect|generate`. Tiny random
models made here; nothing from ../shared."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.__main__ import main
from engine.device import quantize_for_cpu
from engine.errors import UserError
from engine.text.chargpt import CharGPT, CharGPTConfig, CharTokenizer, save_chargpt
from engine.text.charlstm import CharLSTM, CharLSTMConfig, save_charlstm
from engine.text.inspect import (GATES, attention, attention_forward, cells, find_cells, gate_saturation,
                                 text_properties)
from tests.test_cli import run_cli

TEXT = 'ROMEO:\nHe said "go now", and (softly) "stay".\nJULIET:\nI say "yes" to you and "no" to them.\n'
TOKENIZER = CharTokenizer.from_text(TEXT + "abcdefghijklmnopqrstuvwxyz")


def tiny_gpt(block: int = 16, seed: int = 0) -> CharGPT:
    torch.manual_seed(seed)
    config = CharGPTConfig(vocab_size=len(TOKENIZER.chars), block_size=block, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return CharGPT(config).eval()


def tiny_lstm(block: int = 256, seed: int = 0, n_layer: int = 2, hidden: int = 16) -> CharLSTM:
    torch.manual_seed(seed)
    config = CharLSTMConfig(vocab_size=len(TOKENIZER.chars), n_embd=8, hidden=hidden, n_layer=n_layer, dropout=0.0,
                            block_size=block)
    model = CharLSTM(config).eval()
    with torch.no_grad():  # larger than the default init, so the gates move and saturate
        for parameter in model.lstm.parameters():
            parameter.mul_(3.0)
    return model


def ids(text: str) -> torch.Tensor:
    return torch.tensor([TOKENIZER.encode(text)])


# ---------------------------------------------------------------------------------------------------------- equivalence


def test_lstm_step_by_step_equals_nn_lstm():
    model = tiny_lstm()
    x = torch.cat((ids(TEXT[:40]), ids(TEXT[40:80])))  # a batch of two
    state = (0.5 * torch.randn(2, 2, 16), torch.randn(2, 2, 16))
    logits, _, (h, c) = model(x, state=state)
    step_logits, kept = model.inspect(x, state)
    assert torch.allclose(step_logits, logits, atol=1e-5)
    assert torch.allclose(kept["hidden"][:, :, -1], h, atol=1e-5) and torch.allclose(kept["cell"][:, :, -1], c, atol=1e-5)
    out, _ = model.lstm(model.embed(x), state)
    assert torch.allclose(kept["hidden"][-1], out, atol=1e-5)
    assert set(kept) == {"input", "forget", "candidate", "output", "cell", "hidden"}
    assert all(value.shape == (2, 2, 40, 16) for value in kept.values())


@pytest.mark.parametrize("quantized", [False, True])
def test_explicit_attention_reproduces_the_forward_pass(quantized: bool):
    model = tiny_gpt()
    if quantized:
        model = quantize_for_cpu(model)  # as the shipped GPT runs on a CPU: int8 Linear layers
    x = ids(TEXT[:16])
    logits, maps = attention_forward(model, x)
    with torch.no_grad():
        expected = model(x)[0][0]
    assert torch.allclose(logits, expected, atol=1e-4), (logits - expected).abs().max()
    assert maps.shape == (2, 2, 16, 16)


def test_attention_rows_sum_to_one_and_never_look_ahead():
    view = attention(tiny_gpt(), TOKENIZER, TEXT[:16])
    maps = view.attention
    assert maps.shape == (2, 2, 16, 16) and view.tokens == list(TEXT[:16]) and not view.cut and view.message == ""
    assert np.allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps, k=1) == 0.0)  # every key after its query: exactly zero
    assert maps[:, :, 0, 0] == pytest.approx(1.0)  # the first character can only look at itself
    assert len(view.top5) == 16 and all(len(guesses) == 5 for guesses in view.top5)
    probs = [p for _, p in view.top5[3]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert all(char in TOKENIZER.chars for char, _ in view.top5[3])


# ---------------------------------------------------------------------------------------------------------- the views


def test_long_text_is_cut_to_the_context_with_a_message():
    view = attention(tiny_gpt(block=16), TOKENIZER, TEXT)
    assert view.cut and view.tokens == list(TEXT[-16:]) and view.attention.shape[-1] == 16
    assert f"{len(TEXT)} characters" in view.message and "last 16" in view.message


def test_lstm_reads_the_cut_text_before_showing_its_end():
    """The cells shown for the text's end are those the whole text leads to, not a fresh start."""
    model = tiny_lstm(block=20)
    view = cells(model, TOKENIZER, TEXT, layer=0)
    _, kept = model.inspect(ids(TEXT))
    assert view.cut and view.tokens == list(TEXT[-20:]) and "last 20" in view.message
    assert np.allclose(view.cells, kept["cell"][0, 0, -20:].tanh().numpy(), atol=1e-5)


def test_unknown_characters_are_counted_and_listed():
    text = "café, naïve café"
    view = attention(tiny_gpt(), TOKENIZER, text)
    assert view.unknown == ["é", "ï"] and view.unknown_count == 3
    assert "3 characters the model never saw" in view.message and "' '" in view.message  # read as a space
    assert cells(tiny_lstm(), TOKENIZER, text).unknown_count == 3


def test_cells_view_shapes_and_gate_saturation():
    model = tiny_lstm()
    view = cells(model, TOKENIZER, TEXT)
    T = len(TEXT)
    assert view.layer == 1 and view.cells.shape == (T, 16) and np.all(np.abs(view.cells) <= 1)
    assert view.gates == GATES == ("input", "forget", "output")
    assert view.saturation.shape == (2, 3, 2) and view.saturation_per_cell.shape == (2, 3, 16, 2)
    assert np.all(view.saturation >= 0) and np.all(view.saturation.sum(-1) <= 1)
    assert np.allclose(view.saturation, view.saturation_per_cell.mean(axis=2))
    assert view.saturation.max() > 0  # the scaled-up weights saturate some gates
    assert len(view.top5) == T
    gates = {"input": torch.tensor([[[[0.05, 0.5], [0.95, 0.99]]]]), "forget": torch.full((1, 1, 2, 2), 0.5),
             "output": torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])}  # (n_layer 1, batch 1, T 2, hidden 2)
    total, per_cell = gate_saturation(gates)
    assert per_cell[0, 0].tolist() == [[0.5, 0.5], [0.0, 0.5]] and total[0].tolist() == [[0.25, 0.5], [0, 0], [0.5, 0.5]]


def test_wrong_model_kinds_empty_text_and_bad_layer_are_user_errors():
    with pytest.raises(UserError, match="has no attention"):
        attention(tiny_lstm(), TOKENIZER, TEXT)
    with pytest.raises(UserError, match="no memory cells"):
        cells(tiny_gpt(), TOKENIZER, TEXT)
    with pytest.raises(UserError, match="text"):
        attention(tiny_gpt(), TOKENIZER, "")
    with pytest.raises(UserError, match="text"):
        cells(tiny_lstm(), TOKENIZER, "")
    with pytest.raises(UserError, match="between 0 and 1"):
        cells(tiny_lstm(), TOKENIZER, TEXT, layer=2)
    assert cells(tiny_lstm(), TOKENIZER, TEXT, layer=-2).layer == 0


# ---------------------------------------------------------------------------------------------------------- cell search


def test_text_properties():
    text = 'ROMEO:\nSay "hi" (now).\n'
    props = text_properties(text)
    assert all(values.shape == (len(text),) for values in props.values())
    quote = "".join("q" if v else "." for v in props["inside quotes"])
    assert quote == '.' * 11 + "qqq" + "." * 9  # the opening quote is inside, the closing one outside
    assert props["inside brackets"][text.index("(")] == 1 and props["inside brackets"][text.index(")")] == 0
    assert props["speaker name"].tolist() == [1.0] * 6 + [0.0] * (len(text) - 6)
    assert props["position in line"][:8].tolist() == [1, 2, 3, 4, 5, 6, 0, 1]
    assert props["start of line"][[0, 7]].tolist() == [1, 1] and props["start of line"].sum() == 2
    assert props["upper case"][:5].sum() == 5 and props["inside a word"][text.index("S")] == 1
    assert text_properties("") and text_properties("")["inside quotes"].shape == (0,)


def test_find_cells_skips_constant_properties_and_cells():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=50)
    acts = np.stack([rng.normal(size=50), np.zeros(50), -2 * signal + 0.1 * rng.normal(size=50)], axis=1)
    found = find_cells(acts, {"signal": signal, "constant": np.ones(50)}, top=2)
    assert [item["property"] for item in found] == ["signal", "signal"]
    assert found[0]["cell"] == 2 and found[0]["correlation"] < -0.99
    assert all(np.isfinite(item["correlation"]) for item in found)


def planted_quote_cell(cell: int = 5, big: float = 20.0) -> CharLSTM:
    """One layer of 8 cells, random but for `cell`, whose weights are set by hand so that its c is +1 inside
    double quotes and -1 outside. The quote character alone has a non-zero first embedding feature; on it the
    input gate opens and the forget gate shuts, and the candidate is minus the sign of the cell's own previous
    h = tanh(c) (plus a small bias so that the first quote, from c = 0, goes to +1): the cell flips. On any
    other character the input gate is shut and the forget gate open: the cell holds. The output gate is open."""
    model = tiny_lstm(n_layer=1, hidden=8, seed=1)
    H, quote = 8, TOKENIZER.index['"']
    i, f, g, o = (slice(n * H + cell, n * H + cell + 1) for n in range(4))
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
        model.embed.weight[quote, 0] = 1.0
        for tensor in (model.lstm.weight_ih_l0, model.lstm.weight_hh_l0, model.lstm.bias_ih_l0, model.lstm.bias_hh_l0):
            for rows in (i, f, g, o):
                tensor[rows] = 0.0
        model.lstm.weight_ih_l0[i, 0], model.lstm.bias_ih_l0[i] = 2 * big, -big  # open on a quote only
        model.lstm.weight_ih_l0[f, 0], model.lstm.bias_ih_l0[f] = -2 * big, big  # shut on a quote only
        model.lstm.weight_hh_l0[g, cell], model.lstm.bias_ih_l0[g] = -big, 0.3 * big  # minus the previous sign
        model.lstm.bias_ih_l0[o] = big
    return model


def test_the_cell_search_finds_a_planted_quote_cell():
    model = planted_quote_cell(cell=5)
    text = TEXT + 'And then "a longer quotation, with words" and so "on" until the end.\n'
    view = cells(model, TOKENIZER, text)
    inside = text_properties(text)["inside quotes"]
    after_first_quote = np.arange(len(text)) >= text.index('"')
    assert np.allclose(view.cells[after_first_quote, 5], np.where(inside, np.tanh(1), -np.tanh(1))[after_first_quote],
                       atol=1e-3)  # the cell holds +-1, as planned
    found = find_cells(view.cells, text_properties(text))
    quotes = [item for item in found if item["property"] == "inside quotes"]
    assert quotes[0]["cell"] == 5 and quotes[0]["correlation"] > 0.9, quotes
    assert found[0] == quotes[0]  # and it is the strongest pair of all


# ---------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"gpt": save_chargpt(tiny_gpt(), TOKENIZER, root / "tiny-gpt", "tiny-gpt", {}, {}, "none (random weights, for tests)"),
            "lstm": save_charlstm(planted_quote_cell(), TOKENIZER, root / "tiny-lstm", "tiny-lstm", {}, {},
                                  "none (hand-set weights, for tests)")}


def run_main(capsys, *args: str) -> tuple[int, dict]:
    code = main(list(args))
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1])


def test_cli_inspect_attention_json(model_folders):
    result = run_cli("inspect", "attention", "--model", str(model_folders["gpt"]), "--text", TEXT, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    maps = np.array(report["attention"])
    assert maps.shape == (2, 2, 16, 16) and report["tokens"] == list(TEXT[-16:]) and report["cut"] is True
    assert np.allclose(maps.sum(-1), 1.0, atol=2e-3) and np.all(np.triu(maps, k=1) == 0)
    assert report["unknown"] == [] and len(report["top5"]) == 16 and len(report["top5"][0][0]) == 2


def test_cli_inspect_cells_json(model_folders, capsys, tmp_path: Path):
    speech = tmp_path / "speech.txt"
    speech.write_text(TEXT + 'And "so" on.\n', encoding="utf-8")
    code, report = run_main(capsys, "inspect", "cells", "--model", str(model_folders["lstm"]), "--file", str(speech), "--json")
    assert code == 0
    assert np.array(report["cells"]).shape == (len(TEXT) + 13, 8) and "".join(report["tokens"]) == speech.read_text()
    assert report["found"][0] == {"cell": 5, "property": "inside quotes", "correlation": report["found"][0]["correlation"]}
    assert report["found"][0]["correlation"] > 0.9
    assert np.array(report["saturation"]["layers"]).shape == (1, 3, 2)
    assert np.array(report["saturation"]["per_cell"]).shape == (1, 3, 8, 2)


def test_cli_inspect_wrong_kind_empty_text_and_missing_text_exit_2(model_folders, capsys):
    for args, message in [(("attention", "--model", str(model_folders["lstm"]), "--text", TEXT), "has no attention"),
                          (("cells", "--model", str(model_folders["gpt"]), "--text", TEXT), "no memory cells"),
                          (("attention", "--model", str(model_folders["gpt"]), "--text", ""), "text"),
                          (("cells", "--model", str(model_folders["lstm"])), "--text TEXT or --file PATH")]:
        code, report = run_main(capsys, "inspect", *args, "--json")
        assert code == 2 and message in report["error"], report


def test_cli_generate_json(model_folders, capsys):
    for kind in ("gpt", "lstm"):
        code, report = run_main(capsys, "generate", "--model", str(model_folders[kind]), "--prompt", "ROMEO:",
                                "--length", "40", "--seed", "3", "--top-k", "10", "--json")
        assert code == 0 and len(report["text"]) == 40 and set(report["text"]) <= set(TOKENIZER.chars)
        assert report["model"] == f"tiny-{kind}" and report["chars_per_s"] > 0
        again = run_main(capsys, "generate", "--model", str(model_folders[kind]), "--prompt", "ROMEO:",
                         "--length", "40", "--seed", "3", "--top-k", "10", "--json")[1]
        assert again["text"] == report["text"]  # the seed decides
    code, report = run_main(capsys, "generate", "--model", str(model_folders["gpt"]), "--temperature", "0", "--json")
    assert code == 2 and "Temperature" in report["error"]
