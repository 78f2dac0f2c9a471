import numpy as np
import pytest

from nanonet_hf.teachers import classifier as teacher_module
from nanonet_hf.data import sample_per_class, training_dataset
from nanonet_hf.teachers import add_teacher_logits, check_teacher, train_teacher

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


def test_any_teacher_that_implements_the_interface_teaches(tiny_model_dir, toy_pool, tmp_path, monkeypatch):
    """The trainer takes a built teacher through the one interface (`nanonet_hf.teachers.Teacher`): a user's own
    kind of teacher needs a name, its label names, a fingerprint and logits, nothing else."""
    from nanonet_hf import MutualDistillationTrainer, Teacher

    from .test_pipeline import make_args, raw_splits

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    labeled, unlabeled, test = raw_splits(toy_pool)

    class KeywordTeacher(Teacher):
        name, fingerprint, label_names = "keywords", "keywords-v1", sorted(LABELS)

        def logits(self, texts, batch_size=64):
            words = {"food": ("pasta", "bread", "spicy"), "sport": ("goal", "team", "match"), "tech": ("code", "chip")}
            return np.log(np.array([[0.1 + sum(w in text for w in words[c]) for c in self.label_names] for text in texts]))

    trainer = MutualDistillationTrainer(model=tiny_model_dir, teacher_model=KeywordTeacher(), args=make_args(tmp_path),
                                        train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test)  # fmt: skip
    rows = trainer.train_dataset
    expected = KeywordTeacher().logits(list(rows["text"]))
    np.testing.assert_allclose(np.asarray(rows["teacher_logits"]), expected, rtol=1e-5)
    assert trainer.card_data.teacher_name == "keywords" and trainer.teacher_type == "custom"
    trainer.train()
    assert trainer.results().teacher["accuracy"] > 0
    with pytest.raises(ValueError, match="The teacher keywords predicts labels"):
        class Other(KeywordTeacher):
            label_names = ["a", "b", "c"]

        MutualDistillationTrainer(model=tiny_model_dir, teacher_model=Other(), args=make_args(tmp_path / "other"),
                                  train_dataset=labeled, unlabeled_dataset=unlabeled)  # fmt: skip
