"""Teachers: what the students learn from on the unlabeled text. One interface ([`Teacher`]), four kinds (a
transformers classifier, SetFit, an LLM that labels the pool, an ensemble of them), one factory that tells them apart
([`plan_teacher`], [`build_teacher`]), their calibration on the labeled rows, and the cache of their predictions."""

import os

from datasets import Dataset

from .base import Teacher
from .calibration import cross_fitted_logits, fit_temperature, fitted_teacher_temperature, fold_teachers
from .classifier import ClassifierTeacher, as_teacher, check_teacher, load_teacher, train_teacher
from .ensemble import TeacherEnsemble, fit_mixture_weights
from .factory import BuiltTeacher, TeacherPlan, build_teacher, plan_teacher, teacher_kind
from .llm import LLMTeacher
from .setfit import SetFitTeacher, train_in_every_process


def add_teacher_logits(dataset: Dataset, teacher: "str | os.PathLike | Teacher", *, label_names: list[str] | None = None,
                       max_length: int = 64, batch_size: int = 64, cache_dir: str | None = None) -> Dataset:  # fmt: skip
    """`dataset` with a `teacher_logits` column (C floats per row) computed once from its `text` column by `teacher`
    (a [`Teacher`], or a classifier's folder), cached in the datasets cache (`Teacher.add_logits`); with
    `label_names`, the teacher must predict exactly those. Under several processes, call it inside
    `TrainingArguments.main_process_first()`: the main process computes, the others read its file."""
    return _checked(teacher, label_names, max_length).add_logits(dataset, max_length=max_length, batch_size=batch_size,
                                                                  cache_dir=cache_dir)  # fmt: skip


def add_teacher_embeddings(dataset: Dataset, teacher: "str | os.PathLike | Teacher", *, label_names: list[str] | None = None,
                           max_length: int = 64, batch_size: int = 64, cache_dir: str | None = None) -> Dataset:  # fmt: skip
    """`dataset` with a `teacher_embeddings` column (the teacher's sentence embedding of each row's `text`), cached
    like [`add_teacher_logits`]: a SetFit body's, or a classifier's mean-pooled last hidden states."""
    return _checked(teacher, label_names, max_length).add_embeddings(dataset, max_length=max_length,
                                                                      batch_size=batch_size, cache_dir=cache_dir)  # fmt: skip


def _checked(teacher, label_names: list[str] | None, max_length: int) -> Teacher:
    teacher = as_teacher(teacher, max_length=max_length)
    if label_names is not None and list(teacher.label_names) != list(label_names):
        raise ValueError(f"The teacher {teacher.name} predicts labels {teacher.label_names}, but the data's labels are "
                         f"{list(label_names)}. A teacher must share the label space, in the same order.")  # fmt: skip
    return teacher


__all__ = [
    "BuiltTeacher", "ClassifierTeacher", "LLMTeacher", "SetFitTeacher", "Teacher", "TeacherEnsemble", "TeacherPlan",
    "add_teacher_embeddings", "add_teacher_logits", "as_teacher", "build_teacher", "check_teacher",
    "cross_fitted_logits", "fit_mixture_weights", "fit_temperature", "fitted_teacher_temperature", "fold_teachers",
    "load_teacher", "plan_teacher", "teacher_kind", "train_in_every_process", "train_teacher",
]  # fmt: skip
