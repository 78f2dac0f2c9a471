"""The teacher's temperature fitted on labeled rows it did not learn from (`teacher_temperature="fit"`): the fit
against a grid, cross-fitting that never predicts a row with a teacher made from it and caches each fold, the
trainer on every architecture, and bad settings refused before any work."""

import json
import re

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value
from transformers import HfArgumentParser

from nanonet_hf import MutualDistillationConfig, MutualDistillationTrainer, SetFitTeacher
from nanonet_hf.teachers import ClassifierTeacher
from nanonet_hf.teachers.factory import teachers_to_train
from nanonet_hf.teachers.calibration import (
    TEMPERATURE_BOUNDS,
    cross_fitted_logits,
    cross_fitting_folds,
    fit_temperature,
    fitted_teacher_temperature,
    temperature_nll,
)

from .conftest import LABELS, make_texts
from .test_llm_teacher import FixedTeacher
from .test_pipeline import make_args, raw_splits
from .tiny_models import TINY, save_tiny


def labeled_rows(per_class=6, seed=0) -> Dataset:
    texts, labels = make_texts(per_class, seed=seed)
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


@pytest.mark.parametrize("true_temperature", [0.3, 1.0, 3.0])
def test_the_fitted_temperature_is_the_grid_minimum_and_recovers_the_one_labels_were_drawn_at(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 4))
    scaled = logits / true_temperature
    probabilities = np.exp(scaled - scaled.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probabilities])
    fitted = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    best = grid[np.argmin([temperature_nll(logits, labels, t) for t in grid])]
    assert fitted == pytest.approx(best, rel=2e-3)
    assert fitted == pytest.approx(true_temperature, rel=0.1)


def test_a_teacher_right_on_every_row_is_sharpened_only_to_the_bound():
    labels = np.arange(30) % 3
    logits = np.log(np.where(np.arange(3) == labels[:, None], 0.6, 0.2))
    assert fit_temperature(logits, labels) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)


def test_folds_are_stratified_and_drawn_by_the_seed():
    labels = np.repeat(np.arange(3), 5)
    fold = cross_fitting_folds(labels, 3, seed=0)
    for c in range(3):
        assert sorted(np.bincount(fold[labels == c], minlength=3)) == [1, 2, 2]
    np.testing.assert_array_equal(fold, cross_fitting_folds(labels, 3, seed=0))
    assert not np.array_equal(fold, cross_fitting_folds(labels, 3, seed=1))


def test_cross_fitted_logits_come_from_teachers_made_without_the_row_and_are_cached(monkeypatch, tmp_path):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    labeled = labeled_rows()
    labels = np.asarray(labeled["label"])
    # right on every row, at 0.5 confidence: the fitted temperature sharpens it
    table = {t: np.log(np.where(np.arange(3) == y, 0.5, 0.25)) for t, y in zip(labeled["text"], labels)}
    calls = []

    class Counting(FixedTeacher):
        def with_rows(self, rows):
            return Counting(self.table, rows["text"])

        def logits(self, texts, batch_size=None):
            calls.append(len(texts))
            return super().logits(texts)  # asserts that no text is one the teacher was made from

    teacher = Counting(table)
    logits = cross_fitted_logits(teacher, labeled, folds=3, seed=0)
    np.testing.assert_allclose(logits, np.stack([table[t] for t in labeled["text"]]), atol=1e-6)
    assert sum(calls) == len(labeled)
    again = cross_fitted_logits(teacher, labeled, folds=3, seed=0)
    assert sum(calls) == len(labeled)  # every fold read back from the cache
    np.testing.assert_array_equal(again, logits)
    found = fitted_teacher_temperature(teacher, labeled, seed=0)
    assert found["held_out_accuracy"] == 1.0 and found["temperature"] < 1 and found["nll_after"] < found["nll_before"]


def test_teachers_and_labels_that_cannot_be_cross_fitted_are_refused(tmp_path, tiny_model_dir):
    labeled = labeled_rows(per_class=2)
    with pytest.raises(ValueError, match=r"3 folds needs >= 3 labeled rows of every class; class 'sport' has 2"):
        cross_fitted_logits(FixedTeacher({}), labeled, folds=3)

    with pytest.raises(ValueError, match="cannot be cross-fitted"):  # a classifier checkpoint cannot be retrained here
        cross_fitted_logits(ClassifierTeacher(tiny_model_dir), labeled_rows(), folds=3)


def test_the_config_reads_fit_or_a_number_from_the_command_line(tmp_path):
    def parsed(value):
        (args,) = HfArgumentParser(MutualDistillationConfig).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--teacher_temperature", value]
        )
        return args.teacher_temperature

    assert parsed("fit") == "fit" and parsed("0.5") == 0.5
    assert MutualDistillationConfig(output_dir=str(tmp_path)).teacher_temperature is None
    with pytest.raises(ValueError, match="teacher_temperature must be a number or 'fit', got 'warm'"):
        parsed("warm")
    with pytest.raises(ValueError, match="teacher_temperature must be > 0"):
        parsed("-1")


@pytest.mark.parametrize("name", list(TINY))
def test_the_trainer_fits_a_setfit_teachers_temperature_for_every_architecture(name, tmp_path, toy_pool, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    base = save_tiny(name, "pretrained", str(tmp_path / "base"))
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, num_students=2, teacher_type="setfit", teacher_temperature="fit")
    trainer = MutualDistillationTrainer(model=base, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test)
    rows = trainer.labeled  # the same SetFit settings, each fold's teacher retrained on the other folds
    teacher = SetFitTeacher(base, rows, num_iterations=1, max_length=16, seed=args.seed)
    expected = fit_temperature(cross_fitted_logits(teacher, rows, seed=args.seed, max_length=16), np.asarray(rows["label"]))
    assert trainer.teacher_temperature == pytest.approx(expected, rel=1e-3)
    trainer.train()
    trainer.save_model()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["training"]["teacher_temperature"] == pytest.approx(expected, rel=1e-3)
    assert results["training"]["teacher_temperature_fit"]["folds"] == 3
    card = (tmp_path / "out" / "student" / "README.md").read_text()
    if trainer.teacher_temperature != 1:
        assert "(fitted on 3-fold cross-fitted predictions of the labeled rows)" in card


def test_fit_is_refused_before_any_work_for_a_teacher_that_cannot_be_cross_fitted(tiny_model_dir, toy_pool, tmp_path, monkeypatch):
    import nanonet_hf.mutual_distillation_trainer as trainer_module
    import nanonet_hf.teachers.factory as factory

    labeled, unlabeled, _ = raw_splits(toy_pool)
    monkeypatch.setattr(trainer_module.StudentCohort, "from_pretrained", lambda *a, **k: pytest.fail("work began"))
    monkeypatch.setattr(factory, "train_teacher", lambda *a, **k: pytest.fail("a teacher was trained"))
    for teacher_type in ("fine_tune", "setfit+fine_tune"):
        with pytest.raises(ValueError, match=re.escape(f"a SetFit or LLM teacher, not '{teacher_type}'")):
            MutualDistillationTrainer(model=tiny_model_dir, args=make_args(tmp_path, teacher_type=teacher_type, teacher_temperature="fit"),
                                      train_dataset=labeled, unlabeled_dataset=unlabeled)  # fmt: skip
    few = labeled.select([i for i, c in enumerate(labeled["category"]) if c != "food"] + [labeled["category"].index("food")])
    with pytest.raises(ValueError, match="class 'food' has 1"):
        MutualDistillationTrainer(model=tiny_model_dir, args=make_args(tmp_path, teacher_type="setfit", teacher_temperature="fit"),
                                  train_dataset=few, unlabeled_dataset=unlabeled)  # fmt: skip


def test_an_llm_teachers_temperature_is_fitted_from_its_folds(tiny_model_dir, tiny_lm, toy_pool, tmp_path, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, num_students=1, teacher_type="llm", llm_teacher=tiny_lm, teacher_temperature="fit",
                     verbalizers=["food=pasta", "sport=goal", "tech=laptop"], llm_examples_per_class=1)  # fmt: skip
    trainer = MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test)
    fit = trainer.teacher_calibration  # each fold's LLM shows examples and fits its calibration from the other folds
    logits = cross_fitted_logits(trainer.teacher, trainer.labeled, seed=args.seed, max_length=16)
    assert fit["temperature"] == pytest.approx(fit_temperature(logits, np.asarray(trainer.labeled["label"])), rel=1e-3)
    assert trainer.teacher_temperature == fit["temperature"] and TEMPERATURE_BOUNDS[0] <= fit["temperature"] <= TEMPERATURE_BOUNDS[1]


def test_a_multi_process_run_trains_first_the_very_fold_teachers_cross_fitting_uses(tiny_model_dir, tiny_lm, toy_pool, tmp_path, monkeypatch):
    """Under several processes the trainer trains every SetFit teacher, folds included, in every process before the
    main one computes logits (`train_in_every_process`); the list must hold the objects cross-fitting then asks."""
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, num_students=1, teacher_type="setfit+llm", llm_teacher=tiny_lm, llm_examples_per_class=0,
                     verbalizers=["food=pasta", "sport=goal", "tech=laptop"], teacher_ensemble_weights="fit", eval_strategy="no")  # fmt: skip
    trainer = MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled)
    listed = teachers_to_train(trainer.teacher, trainer.labeled, fit_temperature=False, seed=args.seed)
    assert [type(t).__name__ for t in listed] == ["SetFitTeacher", "LLMTeacher", *["SetFitTeacher"] * 3, *["LLMTeacher"] * 3]
    assert all(t._model is not None for t in listed if isinstance(t, SetFitTeacher))  # these were the ones it trained

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache-2"))  # the SetFit logits above would hit
    args = make_args(tmp_path / "fit", num_students=1, teacher_type="setfit", teacher_temperature="fit", eval_strategy="no")
    trainer = MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled)
    listed = teachers_to_train(trainer.teacher, trainer.labeled, fit_temperature=True, seed=args.seed)
    assert len(listed) == 4 and listed[0] is trainer.teacher and all(t._model is not None for t in listed)
