"""The text tab through gradio_client: sentiment with explanations, batch mode, streamed generation and stop."""
import time

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests.test_app import client  # noqa: F401  (the launched app, one per module)


def test_sentiment_label_and_word_explanation(client):  # noqa: F811
    label, words, note = client.predict("sst2", "a warm , funny and beautifully acted film", api_name="/classify_text")
    assert label["label"] == "positive" and len(label["confidences"]) == 2
    tokens = [item["token"].strip() for item in words]
    assert tokens == ["a", "warm", ",", "funny", "and", "beautifully", "acted", "film"]
    scores = {item["token"].strip(): item["class_or_confidence"] for item in words}
    assert max(scores, key=scores.get) in ("warm", "funny", "beautifully")  # the strongest positive push
    assert "forward passes" in note
    assert client.predict("sst2", "a dull , tedious mess", api_name="/classify_text")[0]["label"] == "negative"


def test_sentiment_bad_input_is_a_message(client):  # noqa: F811
    with pytest.raises(AppError, match="empty"):
        client.predict("sst2", "   ", api_name="/classify_text")
    label = client.predict("sst2", "great " * 20_000, api_name="/classify_text")[0]  # 120,000 characters
    assert label["label"] == "positive"


def test_batch_lines_and_csv_with_labels(client, tmp_path):  # noqa: F811
    table, csv_path, summary = client.predict("sst2", "i loved it\nterrible , just terrible\n\n", None, api_name="/classify_text_batch")
    assert [row[1] for row in table["data"]] == ["positive", "negative"]
    assert open(csv_path).read().startswith("text,label,probability")
    upload = tmp_path / "reviews.csv"
    upload.write_text("review,sentiment\nwonderful,positive\nawful,negative\n", encoding="utf-16")
    table, _, summary = client.predict("sst2", "", handle_file(str(upload)), api_name="/classify_text_batch")
    assert len(table["data"]) == 2 and "100.0%" in summary
    bad = tmp_path / "bad.csv"
    bad.write_text("id,stars\n1,5\n")
    with pytest.raises(AppError, match="no text column"):
        client.predict("sst2", "", handle_file(str(bad)), api_name="/classify_text_batch")


def test_generation_streams_and_stops(client):  # noqa: F811
    job = client.submit("shakespeare", "ROMEO:\n", 300, 0.8, 0, 1.0, 7, True, api_name="/generate")
    updates = list(job)
    text, coloured, status = updates[-1]
    assert len(updates) >= 2 and text.startswith("ROMEO:\n") and len(text) == len("ROMEO:\n") + 300
    assert status.startswith("done") and len(coloured) == 300
    again = client.predict("shakespeare", "ROMEO:\n", 300, 0.8, 0, 1.0, 7, False, api_name="/generate")
    assert again[0] == text  # the same seed gives the same text

    job = client.submit("shakespeare", "To be, or not", 2000, 1.0, 0, 1.0, 1, False, api_name="/generate")
    deadline = time.time() + 30
    while not job.outputs() and time.time() < deadline:  # the first piece of text has arrived
        time.sleep(0.02)
    client.predict(api_name="/stop_generation")
    text, _, status = job.result(timeout=30)
    assert status.startswith("stopped") and len(text) < len("To be, or not") + 2000


def test_generation_with_unseen_characters_and_bad_settings(client):  # noqa: F811
    text, _, status = client.predict("shakespeare", "Привет 🎭 ROMEO", 20, 0.8, 0, 1.0, 0, False, api_name="/generate")
    assert status.startswith("done") and len(text) == len("Привет 🎭 ROMEO") + 20
    with pytest.raises(AppError, match="less than minimum"):
        client.predict("shakespeare", "ROMEO", 20, 0.0, 0, 1.0, 0, False, api_name="/generate")
    with pytest.raises(AppError, match="Pick a model"):
        client.predict(None, "ROMEO", 20, 0.8, 0, 1.0, 0, False, api_name="/generate")


def test_a_stop_flag_lives_only_while_its_generation_runs():
    """One flag per generating session, removed when it ends (finished or abandoned): the dict of flags does not
    grow with every visitor of a long-running Space, and Stop with nothing running creates nothing."""
    from types import SimpleNamespace

    from demos import text

    request = SimpleNamespace(session_hash="flag-test")
    text.stop_generation(request)
    assert "flag-test" not in text._stop_flags
    stream = text.generate_stream("shakespeare", "ROMEO:\n", 200, 0.8, 0, 1.0, 0, False, request)
    next(stream)
    assert "flag-test" in text._stop_flags
    text.stop_generation(request)
    *_, (_, _, status) = stream
    assert status.startswith("stopped") and "flag-test" not in text._stop_flags
    abandoned = text.generate_stream("shakespeare", "ROMEO:\n", 200, 0.8, 0, 1.0, 0, False, request)
    next(abandoned)
    abandoned.close()  # the browser went away mid-stream
    assert "flag-test" not in text._stop_flags
