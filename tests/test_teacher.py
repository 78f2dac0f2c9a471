import numpy as np
import pytest

from nanonet_hf import teacher as teacher_module
from nanonet_hf.data import sample_per_class, training_dataset
from nanonet_hf.teacher import add_teacher_logits, check_teacher, train_teacher

from .conftest import LABELS


@pytest.fixture(scope="module")
def trained_teacher(tiny_model_dir, tmp_path_factory):
    from datasets import ClassLabel, Dataset, Features, Value

    from .conftest import make_texts

    texts, labels = make_texts(4, seed=1)
    labeled = Dataset.from_dict(
        {"text": texts, "label": labels}, features=Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    )
    return train_teacher(tiny_model_dir, labeled, str(tmp_path_factory.mktemp("teacher") / "t"), num_train_epochs=1)


def test_teacher_logits_are_computed_once_and_reused(trained_teacher, toy_pool, tmp_path, monkeypatch):
    labeled, rest = sample_per_class(toy_pool, 2, seed=0)
    rows = training_dataset(labeled, rest.remove_columns("label"))
    loads = []
    original = teacher_module.load_teacher
    monkeypatch.setattr(teacher_module, "load_teacher", lambda *a, **k: loads.append(1) or original(*a, **k))

    first = add_teacher_logits(rows, trained_teacher, label_names=LABELS, cache_dir=str(tmp_path))
    assert np.asarray(first["teacher_logits"]).shape == (len(rows), 3) and loads == [1]
    second = add_teacher_logits(rows, trained_teacher, label_names=LABELS, cache_dir=str(tmp_path))
    assert loads == [1], "the cached logits were recomputed"
    np.testing.assert_array_equal(np.asarray(second["teacher_logits"]), np.asarray(first["teacher_logits"]))
    # other texts miss the cache
    add_teacher_logits(rows.select(range(5)), trained_teacher, label_names=LABELS, cache_dir=str(tmp_path))
    assert loads == [1, 1]


def test_teacher_with_another_label_space_is_refused(trained_teacher):
    with pytest.raises(ValueError, match=r"predicts labels \['sport', 'food', 'tech'\], but the data's labels are"):
        check_teacher(trained_teacher, ["food", "sport", "tech"])


def test_teacher_folder_is_a_plain_classifier(trained_teacher):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(trained_teacher)
    assert list(model.config.id2label.values()) == LABELS
