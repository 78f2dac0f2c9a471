import numpy as np
import pytest
import torch
from datasets import Dataset

from nanonet_hf.data import (
    CohortCollator,
    MixedBatchSampler,
    prepare_data,
    read_labeled_file,
    sample_per_class,
    tokenize,
    training_dataset,
)
from nanonet_hf.losses import IGNORE_INDEX

from .conftest import LABELS, make_texts, write_jsonl


def labeled_rows(n_per_class=20, seed=0, as_names=True):
    texts, labels = make_texts(n_per_class, seed)
    return [{"text": t, "label": LABELS[y] if as_names else y} for t, y in zip(texts, labels)]


def test_sample_per_class_is_exact_reproducible_and_disjoint(toy_pool):
    labeled, rest = sample_per_class(toy_pool, 5, seed=3)
    assert np.bincount(labeled["label"]).tolist() == [5, 5, 5]
    assert len(rest) == len(toy_pool) - 15
    assert not set(labeled["text"]) & set(rest["text"])
    again, _ = sample_per_class(toy_pool, 5, seed=3)
    other, _ = sample_per_class(toy_pool, 5, seed=4)
    assert again["text"] == labeled["text"] and other["text"] != labeled["text"]


def test_budget_larger_than_a_class_is_refused_naming_the_class(toy_pool):
    pool = toy_pool.filter(lambda row: row["label"] != 1 or row["text"].startswith("a"))
    with pytest.raises(ValueError, match="'food' has"):
        sample_per_class(pool, 10, seed=0)


def test_files_with_class_names_split_into_labeled_unlabeled_and_eval(tmp_path):
    labeled = write_jsonl(tmp_path / "pool.jsonl", labeled_rows())
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"text": "spicy code"}, {"text": "goal dinner"}])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", labeled_rows(3, seed=9))
    data = prepare_data(
        labeled_file=labeled, unlabeled_file=extra, eval_file=evaluation, labels_per_class=4, seed=0
    )
    assert data.label_names == sorted(LABELS)
    assert len(data.labeled) == 12 and len(data.unlabeled) == 60 - 12 + 2
    assert data.unlabeled.column_names == ["text"]
    assert data.test.features["label"].names == data.label_names


def test_files_with_integer_labels_and_custom_columns(tmp_path):
    rows = [{"sentence": row["text"], "y": row["label"]} for row in labeled_rows(as_names=False)]
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    data = prepare_data(labeled_file=path, text_column="sentence", label_column="y", labels_per_class=2)
    assert data.label_names == ["0", "1", "2"]


def test_csv_files_are_read(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in labeled_rows()) + "\n")
    assert len(prepare_data(labeled_file=str(path)).labeled) == 60


def test_empty_unlabeled_pool_is_allowed(tmp_path):
    data = prepare_data(labeled_file=write_jsonl(tmp_path / "pool.jsonl", labeled_rows(4)))
    assert len(data.labeled) == 12 and len(data.unlabeled) == 0


def test_missing_text_column_names_the_file_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"sentence": r["text"], "label": r["label"]} for r in labeled_rows()])
    with pytest.raises(ValueError, match=r"pool.jsonl has no column 'text' \(set text_column\); its columns are"):
        prepare_data(labeled_file=path)


def test_unknown_label_in_eval_file_is_named(tmp_path):
    labeled = write_jsonl(tmp_path / "pool.jsonl", labeled_rows())
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"text": "new phone", "label": "weather"}])
    with pytest.raises(ValueError, match=r"eval.jsonl: unknown label\(s\) \['weather'\]"):
        prepare_data(labeled_file=labeled, eval_file=evaluation)


def test_unknown_dataset_is_refused_before_reading_anything():
    with pytest.raises(ValueError, match=r"Unknown dataset 'imdb'; built-in datasets are \['political_speeches', 'rotten_tomatoes', 'trec6'\]"):
        prepare_data(dataset="imdb", labels_per_class=10)


def test_empty_texts_are_counted_and_located(tmp_path):
    rows = labeled_rows(2) + [{"text": "  ", "label": "food"}]
    with pytest.raises(ValueError, match=r"1 rows have an empty or non-string text \(rows \[6\]"):
        read_labeled_file(write_jsonl(tmp_path / "pool.jsonl", rows))


def test_single_class_is_refused(tmp_path):
    rows = [row for row in labeled_rows() if row["label"] == "food"]
    with pytest.raises(ValueError, match="single class"):
        prepare_data(labeled_file=write_jsonl(tmp_path / "pool.jsonl", rows))


def test_training_dataset_puts_labeled_rows_first(toy_pool):
    labeled, rest = sample_per_class(toy_pool, 2, seed=0)
    train = training_dataset(labeled, rest.remove_columns("label"))
    assert train["labels"][:6] == labeled["label"]
    assert set(train["labels"][6:]) == {IGNORE_INDEX}


@pytest.mark.parametrize("num_labeled, num_unlabeled", [(6, 50), (6, 0), (30, 7)])
def test_mixed_batch_sampler_composition(num_labeled, num_unlabeled):
    sampler = MixedBatchSampler(num_labeled, num_unlabeled, batch_size=8, unlabeled_ratio=3.0, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler)
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    for batch in batches:
        labeled = [i for i in batch if i < num_labeled]
        assert len(labeled) == (2 if num_unlabeled else 8)
        assert all(i < num_labeled + num_unlabeled for i in batch)
    if num_unlabeled:  # one epoch covers the whole unlabeled pool
        assert {i for i in order if i >= num_labeled} == set(range(num_labeled, num_labeled + num_unlabeled))


def test_mixed_batch_sampler_depends_only_on_seed_and_epoch():
    def order(seed, epoch):
        sampler = MixedBatchSampler(6, 40, batch_size=8, unlabeled_ratio=3.0, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


def batches_of(sampler):
    order = list(sampler)
    return [order[i : i + sampler.batch_size] for i in range(0, len(order), sampler.batch_size)]


@pytest.mark.parametrize("num_labeled, num_unlabeled", [(12, 400), (40, 0)])
def test_length_grouped_batches_pad_less_and_keep_the_epochs_rows(num_labeled, num_unlabeled):
    lengths = np.random.default_rng(0).integers(4, 64, num_labeled + num_unlabeled)
    settings = {"batch_size": 8, "unlabeled_ratio": 3.0, "seed": 0}
    plain = MixedBatchSampler(num_labeled, num_unlabeled, **settings)
    grouped = MixedBatchSampler(num_labeled, num_unlabeled, **settings, lengths=lengths, group_window=10)
    plain_batches, grouped_batches = batches_of(plain), batches_of(grouped)
    assert len(grouped_batches) == len(plain_batches)
    padded = [sum(lengths[batch].max() * len(batch) for batch in batches) for batches in (plain_batches, grouped_batches)]
    assert padded[1] < 0.8 * padded[0]  # measured: 0.68 and 0.66 of the ungrouped padding
    for batch in grouped_batches:
        labeled = [i for i in batch if i < num_labeled]
        assert len(labeled) == grouped.labeled_per_batch
        assert len(set(labeled)) == len(labeled)  # each labeled pass is sorted on its own: no row twice in a batch
    if num_unlabeled:
        unlabeled = {i for batch in grouped_batches for i in batch if i >= num_labeled}
        assert unlabeled == set(range(num_labeled, num_labeled + num_unlabeled))  # the epoch covers the pool
    again = MixedBatchSampler(num_labeled, num_unlabeled, **settings, lengths=lengths, group_window=10)
    assert batches_of(again) == grouped_batches
    again.set_epoch(1)
    assert batches_of(again) != grouped_batches


def test_length_grouping_needs_one_length_per_row():
    with pytest.raises(ValueError, match="lengths has 5 entries for 6 rows"):
        MixedBatchSampler(2, 4, batch_size=4, unlabeled_ratio=1.0, seed=0, lengths=[3] * 5)


def test_collator_pads_and_keeps_labels_and_teacher_logits(tokenizer):
    rows = Dataset.from_dict(
        {"text": ["goal", "spicy pasta for dinner"], "labels": [0, IGNORE_INDEX], "teacher_logits": [[1.0, 0, 0], [0, 2.0, 0]]}
    )
    rows = tokenize(rows, tokenizer, max_length=16)
    batch = CohortCollator(tokenizer)([rows[0], rows[1]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 6)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"].tolist() == [0, IGNORE_INDEX]
    assert torch.equal(batch["teacher_logits"], torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]))


def test_cap_rows_keeps_a_seeded_subset_in_the_rows_order():
    from nanonet_hf.data import cap_rows

    rows = Dataset.from_dict({"text": [f"text {i}" for i in range(50)]})
    kept = cap_rows(rows, 10, seed=3)
    indices = [int(text.split()[1]) for text in kept["text"]]
    assert len(indices) == 10 and indices == sorted(indices)
    assert kept["text"] == cap_rows(rows, 10, seed=3)["text"] != cap_rows(rows, 10, seed=4)["text"]
    assert cap_rows(rows, None, seed=0) is rows and cap_rows(rows, 50, seed=0) is rows


def test_class_names_follow_a_classlabel_cast_and_otherwise_sort():
    from datasets import ClassLabel

    from nanonet_hf.data import labeled_rows as as_rows

    rows = Dataset.from_dict({"text": ["free prize", "see you", "win now"], "label": [1, 0, 1]})
    named = as_rows(rows.cast_column("label", ClassLabel(names=["ham", "spam"])))
    assert named.features["label"].names == ["ham", "spam"] and named["label"] == [1, 0, 1]
    strings = Dataset.from_dict({"text": ["free prize", "see you", "win now"], "label": ["spam", "ham", "spam"]})
    assert as_rows(strings).features["label"].names == ["ham", "spam"]  # sorted, as the README says
    kept = as_rows(strings.cast_column("label", ClassLabel(names=["spam", "ham"])))
    assert kept.features["label"].names == ["spam", "ham"] and kept["label"] == [0, 1, 0]


def test_the_built_in_long_documents_are_split_once_into_a_pool_and_a_fixed_test_set():
    from nanonet_hf.data import load_political_speeches

    first, again = load_political_speeches(), load_political_speeches()
    assert (len(first["train"]), len(first["test"])) == (129, 60)
    assert first["test"]["text"] == again["test"]["text"] and not set(first["test"]["text"]) & set(first["train"]["text"])
    assert first["train"].features["label"].names == ["democrat", "republican"]
    assert np.median([len(text.split()) for text in first["train"]["text"]]) > 400  # longer than an encoder reads
