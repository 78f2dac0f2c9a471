"""Timing side by side (nanonet_hf/speed.py): what is measured, in which order, and what is refused. The figures
themselves are the benchmarks' business (benchmarks/inference.py), never asserted here."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nanonet_hf.speed import classifier_predictor, measure_speed


def test_predictors_run_interleaved_on_the_same_batches_and_get_medians():
    calls = []

    def recorder(name):
        return lambda texts: calls.append((name, tuple(texts)))

    texts = [f"text {i}" for i in range(40)]
    speeds = measure_speed({"a": recorder("a"), "b": recorder("b")}, texts, batch_sizes=(1, 4), repeats=3, warmup=1)
    assert set(speeds) == {"a", "b"}
    for row in speeds.values():
        assert set(row) == {"batch_1_ms", "batch_4_ms", "texts_per_s"} and all(value > 0 for value in row.values())
        assert row["texts_per_s"] == pytest.approx(4 / (row["batch_4_ms"] / 1000))
    # (1 warm-up + 3 timed) × 2 batch sizes × 2 predictors, a then b on the very same batch every time
    assert len(calls) == 16
    assert all(calls[i][0] == "a" and calls[i + 1][0] == "b" and calls[i][1] == calls[i + 1][1] for i in range(0, 16, 2))
    assert {len(batch) for _, batch in calls} == {1, 4}


def test_few_texts_are_cycled_and_bad_calls_are_refused():
    speeds = measure_speed({"a": lambda texts: None}, ["only one"], batch_sizes=(1, 32), repeats=1, warmup=0)
    assert "batch_32_ms" in speeds["a"]
    with pytest.raises(ValueError, match="needs texts"):
        measure_speed({"a": lambda texts: None}, [])
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        measure_speed({"a": lambda texts: None}, ["x"], repeats=0)


def test_classifier_predictor_tokenizes_truncates_and_returns_the_models_logits(tiny_model_dir, tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    predict = classifier_predictor(model, tokenizer, max_length=4)
    logits = predict(["the team score a goal today", "pasta"])
    with torch.no_grad():
        expected = model(**tokenizer(["the team score a goal today", "pasta"], truncation=True, max_length=4,
                                     padding=True, return_tensors="pt")).logits  # fmt: skip
    torch.testing.assert_close(logits, expected)


def test_folder_parameters_reads_the_weights_from_the_safetensors_headers(tiny_model_dir, tmp_path):
    from nanonet_hf.files import folder_parameters

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    assert folder_parameters(tiny_model_dir) == sum(param.numel() for param in model.state_dict().values())
    assert folder_parameters("org/not-a-folder") is None and folder_parameters(str(tmp_path)) is None
