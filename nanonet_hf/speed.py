"""How fast classifiers answer on this machine, measured side by side: texts in, logits out.

Each predictor is a function of a list of texts (tokenization included, as a deployed model pays it). The predictors
run interleaved, one call each per batch size and repeat, on the same real texts, so a slow moment of the machine hits
all of them alike; the figure is the median over the repeats. The trainer writes these figures into `results.json`
and the model card (the family table); `benchmarks/inference.py` prints them for more models.
"""

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Predictor = Callable[[list[str]], object]


def classifier_predictor(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_length: int = 64
) -> Predictor:
    """A predictor of a plain transformers classifier: tokenize (padded to the longest, truncated to `max_length`),
    then one forward without autograd, on the model's device (the trainer times exported students on the CPU, where
    small classifiers are usually served)."""
    model.eval()
    device = next(model.parameters()).device

    def predict(texts: list[str]):
        inputs = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            return model(**inputs).logits

    return predict


def measure_speed(
    predictors: dict[str, Predictor],
    texts: Sequence[str],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 10,
    warmup: int = 2,
    settle_s: float = 0.02,
) -> dict[str, dict[str, float]]:
    """For each predictor, the median milliseconds per call at each batch size (`batch_{n}_ms`) and the texts per
    second at the largest (`texts_per_s`). Batches are consecutive `texts`, a new stretch at every repeat.

    Before each timed call the model runs on the same batch, untimed, for at least `settle_s` seconds: the first
    calls after another model's are slowed by that model's threads (PyTorch's OpenMP threads keep spinning after a
    call; on 2 cores, a static model's first batch after a PyTorch call took 2-15 ms against its 0.7 ms, measured),
    and a deployed model answers its own previous request, not another framework's."""
    if not texts:
        raise ValueError("measure_speed needs texts to time the predictors on.")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    texts = list(texts)
    while len(texts) < max(batch_sizes) + 1:
        texts = texts * 2
    times = {name: {size: [] for size in batch_sizes} for name in predictors}
    for repeat in range(warmup + repeats):
        for size in batch_sizes:
            start = (repeat * size) % (len(texts) - size)
            batch = texts[start : start + size]
            for name, predict in predictors.items():
                _settle(predict, batch, settle_s)
                began = time.perf_counter()
                predict(batch)
                if repeat >= warmup:
                    times[name][size].append(time.perf_counter() - began)
    largest = max(batch_sizes)
    found = {}
    for name, by_size in times.items():
        row = {f"batch_{size}_ms": 1000 * statistics.median(values) for size, values in by_size.items()}
        row["texts_per_s"] = largest / (row[f"batch_{largest}_ms"] / 1000)
        found[name] = row
    return found


def _settle(predict: Predictor, batch: list[str], seconds: float) -> None:
    """`predict(batch)` once, then again until `seconds` have passed."""
    end = time.perf_counter() + seconds
    predict(batch)
    while time.perf_counter() < end:
        predict(batch)


def cpu() -> str:
    """The CPU the figures were measured on, in words."""
    return f"CPU ({os.cpu_count()} cores, {platform.machine()}, {torch.get_num_threads()} torch threads)"
