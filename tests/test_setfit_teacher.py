"""The SetFit teacher on the tiny model: lazy training, log-probability logits in label order, cached logits that
never retrain it, and the recipe's --teacher_type setfit."""

import numpy as np
import pytest

from nanonet_hf import add_teacher_logits
from nanonet_hf.data import sample_per_class, training_dataset
from nanonet_hf.teachers import SetFitTeacher


def test_setfit_teacher_trains_lazily_and_its_cached_logits_need_no_training(tiny_model_dir, toy_pool, tmp_path):
    labeled, rest = sample_per_class(toy_pool, 4, seed=0)
    teacher = SetFitTeacher(tiny_model_dir, labeled, num_iterations=2, batch_size=8, seed=0)
    fingerprint = teacher.fingerprint
    assert teacher._model is None  # nothing trained yet
    assert SetFitTeacher(tiny_model_dir, labeled, num_iterations=2, batch_size=8, seed=1).fingerprint != fingerprint

    train = training_dataset(labeled, rest.remove_columns("label"))
    with_logits = add_teacher_logits(train, teacher, label_names=labeled.features["label"].names, cache_dir=str(tmp_path))
    logits = np.asarray(with_logits["teacher_logits"])
    assert logits.shape == (len(train), 3)
    np.testing.assert_allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-5)
    assert teacher._model is not None and teacher.fingerprint == fingerprint
    np.testing.assert_allclose(teacher.logits(train["text"][:5]), logits[:5], atol=1e-5)

    # the same inputs in a new process (a new object): the cache answers, SetFit never trains
    again = SetFitTeacher(tiny_model_dir, labeled, num_iterations=2, batch_size=8, seed=0)
    cached = add_teacher_logits(train, again, label_names=labeled.features["label"].names, cache_dir=str(tmp_path))
    assert again._model is None
    np.testing.assert_array_equal(np.asarray(cached["teacher_logits"]), logits)


def test_recipe_with_a_setfit_teacher(tiny_model_dir, tmp_path, monkeypatch):
    import sys

    from .conftest import ROOT, write_toy_files

    sys.path.insert(0, f"{ROOT}/recipes")
    import train as recipe

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    pool, test = write_toy_files(tmp_path)
    argv = [
        "--model_name_or_path", tiny_model_dir, "--labeled_file", pool, "--eval_file", test, "--labels_per_class", "4",
        "--num_students", "2", "--student_layers", "3", "1", "--teacher_type", "setfit", "--setfit_body", "null",
        "--setfit_iterations", "2", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--max_length", "16", "--report_to", "none", "--output_dir", str(tmp_path / "run"),
        "--supervised_baseline", "false", "--allow_weak_teacher", "true",
        "--overwrite_output_dir", "true",  # the refusals below reuse these flags
    ]  # fmt: skip
    results = recipe.main(*recipe.parse_args(argv)).to_dict()
    assert results["teacher_name_or_path"].startswith("SetFit (2 pair iterations)")
    assert 0 <= results["teacher"]["accuracy"] <= 1
    assert not (tmp_path / "run" / "teacher").exists()  # nothing pickled or saved for it
    with pytest.raises(ValueError, match="online_teacher trains a transformers classifier along; teacher_type='setfit' cannot"):
        recipe.main(*recipe.parse_args([*argv, "--online_teacher"]))
