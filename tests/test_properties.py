"""Property-based tests (hypothesis): losses, label sampling, batching and the collator over many random inputs."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from hypothesis import given, settings
from hypothesis import strategies as st

from nanonet_hf.data import CohortCollator, MixedBatchSampler, sample_per_class
from nanonet_hf.losses import IGNORE_INDEX, distillation_loss, mutual_loss, supervised_loss

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def logits_and_labels(draw):
    batch, students, classes = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.01, 1.0, 30.0, 300.0]))  # large logits: saturated softmax must stay finite
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, students, classes, generator=generator)
    teacher = scale * torch.randn(batch, classes, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    labels[torch.rand(batch, generator=generator) < draw(st.floats(0, 1))] = IGNORE_INDEX
    return logits, teacher, labels


@SETTINGS
@given(logits_and_labels(), st.floats(0.5, 8.0), st.sampled_from(["kl", "mse"]))
def test_losses_are_finite_non_negative_and_one_per_student(case, temperature, kind):
    logits, teacher, labels = case
    students = logits.shape[1]
    unlabeled = (labels == IGNORE_INDEX).float()
    for value in (
        supervised_loss(logits, labels),
        distillation_loss(logits, teacher, temperature=temperature, weights=unlabeled),
        mutual_loss(logits, kind=kind, temperature=temperature),
    ):
        assert value.shape == (students,)
        assert torch.isfinite(value).all()
        assert (value >= -1e-5).all()  # CE, KL and squared error are non-negative (up to rounding)


@SETTINGS
@given(logits_and_labels(), st.floats(0.5, 8.0), st.sampled_from(["kl", "mse"]))
def test_mutual_loss_is_zero_when_students_agree_and_kd_zero_when_they_match_the_teacher(case, temperature, kind):
    logits, teacher, _ = case
    same = logits[:, :1].expand_as(logits).clone()  # every student = student 0
    torch.testing.assert_close(mutual_loss(same, kind=kind, temperature=temperature), torch.zeros(logits.shape[1]), atol=1e-4, rtol=0)
    students = teacher[:, None, :].expand_as(logits).clone()
    torch.testing.assert_close(distillation_loss(students, teacher, temperature=temperature), torch.zeros(logits.shape[1]), atol=1e-4, rtol=0)


@SETTINGS
@given(logits_and_labels())
def test_supervised_loss_ignores_unlabeled_rows(case):
    logits, _, labels = case
    changed = logits.clone()
    changed[labels == IGNORE_INDEX] += 100.0  # anything on unlabeled rows
    torch.testing.assert_close(supervised_loss(changed, labels), supervised_loss(logits, labels))


@st.composite
def labeled_pool(draw):
    num_classes = draw(st.integers(2, 5))
    counts = draw(st.lists(st.integers(1, 12), min_size=num_classes, max_size=num_classes))
    labels = [label for label, count in enumerate(counts) for _ in range(count)]
    order = np.random.default_rng(draw(st.integers(0, 1000))).permutation(len(labels))
    labels = [labels[i] for i in order]
    texts = [f"text {i}" for i in range(len(labels))]
    features = Features({"text": Value("string"), "label": ClassLabel(names=[f"c{c}" for c in range(num_classes)])})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features), min(counts)


@settings(max_examples=30, deadline=None)
@given(labeled_pool(), st.integers(0, 10_000), st.data())
def test_label_sampling_is_exact_reproducible_and_disjoint(pool_and_min, seed, data):
    pool, smallest = pool_and_min
    budget = data.draw(st.integers(1, smallest))
    labeled, rest = sample_per_class(pool, budget, seed)
    counts = np.bincount(labeled["label"], minlength=pool.features["label"].num_classes)
    assert (counts == budget).all()  # exactly the budget of every class
    again, _ = sample_per_class(pool, budget, seed)
    assert list(labeled["text"]) == list(again["text"])  # same seed, same rows
    assert not set(labeled["text"]) & set(rest["text"])  # no leakage between labeled and the rest
    assert sorted(list(labeled["text"]) + list(rest["text"])) == sorted(pool["text"])  # nothing lost


@SETTINGS
@given(
    st.integers(1, 20), st.integers(0, 60), st.integers(2, 16), st.floats(0.0, 7.0), st.integers(0, 100), st.integers(0, 3)
)
def test_mixed_batches_hold_their_share_of_labeled_rows_and_depend_only_on_seed_and_epoch(
    num_labeled, num_unlabeled, batch_size, ratio, seed, epoch
):
    sampler = MixedBatchSampler(num_labeled, num_unlabeled, batch_size=batch_size, unlabeled_ratio=ratio, seed=seed)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(indices) % batch_size == 0
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        labeled = [i for i in batch if i < num_labeled]
        assert len(labeled) == sampler.labeled_per_batch >= 1  # every batch has labels to learn from
        assert all(0 <= i < num_labeled + num_unlabeled for i in batch)
    if num_unlabeled:  # one epoch = one pass over the unlabeled pool: each unlabeled row at least once
        assert set(range(num_labeled, num_labeled + num_unlabeled)) <= set(indices)
    twin = MixedBatchSampler(num_labeled, num_unlabeled, batch_size=batch_size, unlabeled_ratio=ratio, seed=seed)
    twin.set_epoch(epoch)
    assert list(twin) == indices


@SETTINGS
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(-1, 2)), min_size=1, max_size=8), st.booleans())
def test_collator_pads_every_row_and_keeps_labels_in_order(tokenizer, rows, with_teacher):
    examples = []
    for length, label in rows:
        example = {"input_ids": [2] + [5] * length + [3], "attention_mask": [1] * (length + 2), "labels": IGNORE_INDEX if label < 0 else label}
        if with_teacher:
            example["teacher_logits"] = [float(length), 0.0, -1.0]
        examples.append(example)
    batch = CohortCollator(tokenizer)(examples)
    longest = max(length for length, _ in rows) + 2
    assert batch["input_ids"].shape == (len(rows), longest)
    assert batch["attention_mask"].sum(dim=1).tolist() == [length + 2 for length, _ in rows]
    assert batch["labels"].tolist() == [IGNORE_INDEX if label < 0 else label for _, label in rows]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert ("teacher_logits" in batch) == with_teacher


def test_metrics_are_local_evaluate_modules_that_combine_offline():
    import evaluate
    import numpy as np

    from nanonet_hf.metrics import classification_metrics, evaluate_module

    combined = evaluate.combine([evaluate.load(evaluate_module("accuracy")), evaluate.load(evaluate_module("macro_f1"))])
    predictions, labels = [0, 0, 1, 1, 1], [0, 1, 1, 1, 2]  # class 2 never predicted: F1 0, still in the mean
    scores = combined.compute(predictions=predictions, references=labels, num_classes=3)
    assert scores == {"accuracy": 0.6, "macro_f1": pytest.approx((2 / 3 + 2 / 3 + 0) / 3)}
    assert classification_metrics(np.array(predictions), np.array(labels), 3) == scores
    with pytest.raises(ValueError, match="No evaluate module 'f2'"):
        evaluate_module("f2")
