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
    speeds = measure_speed({"a": recorder("a"), "b": recorder("b")}, texts, batch_sizes=(1, 4), repeats=3, warmup=1, settle_s=0)
    assert set(speeds) == {"a", "b"}
    for row in speeds.values():
        assert set(row) == {"batch_1_ms", "batch_4_ms", "texts_per_s"} and all(value > 0 for value in row.values())
        assert row["texts_per_s"] == pytest.approx(4 / (row["batch_4_ms"] / 1000))
    # (1 warm-up + 3 timed) × 2 batch sizes × 2 predictors, a then b on the very same batch every time, each timed
    # call after one untimed call of the same predictor (settle_s=0: no more)
    assert len(calls) == 32
    assert all([name for name, _ in calls[i : i + 4]] == ["a", "a", "b", "b"] and len(set(calls[i : i + 4])) == 2
               for i in range(0, 32, 4))  # fmt: skip
    assert {len(batch) for _, batch in calls} == {1, 4}


def test_each_timed_call_follows_its_own_model_running_for_the_settling_time():
    import time

    calls = []

    def slow_to_wake(texts):  # a model whose call takes 1 ms
        calls.append(time.perf_counter())
        time.sleep(0.001)

    measure_speed({"a": slow_to_wake}, ["x"] * 8, batch_sizes=(1,), repeats=2, warmup=0, settle_s=0.01)
    # per timed call: untimed calls for at least 10 ms (about 10 of 1 ms), then the timed one
    assert len(calls) >= 2 * 6 and calls[-1] - calls[0] >= 0.02


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
