"""Several teachers as one: the weighted mean of their probabilities (`metrics.ensemble_log_probs`, the same
definition as the students' ensemble). Teachers that see the data differently (SetFit trained on the labels, an LLM
that read the class names) err on different rows, so their mean can beat either.

A member is what a single teacher can be: a [`ClassifierTeacher`], a [`SetFitTeacher`] or an [`LLMTeacher`]. Each
member's logits are cached on their own (`Teacher.add_logits`), so an ensemble reuses what a run with one of its
members computed, and a change of weights recomputes nothing. Each member's logits are divided by its
`default_temperature` before the mean (SetFit's under-confident head is sharpened as it is when it teaches alone).

Weights: "mean" (equal), explicit numbers, or "fit": the mixture weights that maximise the likelihood of the labeled
rows' labels (EM on the simplex), each member predicting rows it was not trained on (cross-fitting: a member trained
on the labels is retrained on the other folds; an LLM member shows the fold's rows no examples of themselves). A
classifier folder cannot be retrained here, so "fit" refuses one.
"""

import functools
import hashlib
import json
import logging
from collections.abc import Sequence

import numpy as np
from datasets import Dataset
from datasets.fingerprint import Hasher

from ..metrics import ensemble_log_probs
from .base import Teacher
from .calibration import check_cross_fitting, cross_fitted_logits
from .classifier import as_teacher

logger = logging.getLogger(__name__)


class TeacherEnsemble(Teacher):
    """Teachers combined into one distribution.

    Args:
        teachers: two or more members ([`Teacher`]s: a classifier, SetFit, an LLM) with one label space.
        weights: "mean", "fit" or one number per member.
        labeled (`Dataset`, *optional*): the labeled rows "fit" is fitted on.
        folds (`int`): cross-fitting folds of "fit".
        seed (`int`): the folds' draw.
    """

    kind = "ensemble"
    default_temperature = 1.0  # members are tempered before the mean

    def __init__(self, teachers: Sequence, *, weights: "str | Sequence[float]" = "mean", labeled: Dataset | None = None,
                 folds: int = 3, seed: int = 0):  # fmt: skip
        self.teachers = [as_teacher(teacher) for teacher in teachers]  # a classifier's folder becomes its teacher
        if len(self.teachers) < 2:
            raise ValueError(f"A teacher ensemble needs at least two teachers, got {len(self.teachers)}.")
        self.names = [t.name for t in self.teachers]
        spaces = [t.label_names for t in self.teachers]
        for name, space in zip(self.names[1:], spaces[1:]):
            if space != spaces[0]:
                raise ValueError(
                    f"The ensemble's teachers predict different labels: {self.names[0]} {spaces[0]}, {name} {space}. "
                    "Every teacher must share one label space, in the same order."
                )
        self.label_names = spaces[0]
        if isinstance(weights, str):
            if weights not in ("mean", "fit"):
                raise ValueError(f"ensemble weights must be 'mean', 'fit' or one number per teacher, got {weights!r}")
            if weights == "fit":
                if labeled is None:
                    raise ValueError("ensemble weights 'fit' need the labeled rows (labeled=).")
                fixed = [name for name, t in zip(self.names, self.teachers) if not t.cross_fittable]
                if fixed:
                    raise ValueError(f"ensemble weights 'fit' retrain each member on folds of the labels; the classifier "
                                     f"checkpoint(s) {fixed} cannot be. Use 'mean' or explicit weights.")  # fmt: skip
                check_cross_fitting(labeled, folds)  # every class in every fold
        else:
            weights = [float(w) for w in weights]
            if len(weights) != len(self.teachers) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"ensemble weights {weights}: give {len(self.teachers)} non-negative numbers, not all zero.")
        self.weights_setting, self.labeled, self.folds, self.seed = weights, labeled, folds, seed
        self._weights = None if weights in ("mean", "fit") else np.asarray(weights) / sum(weights)

    @property
    def name(self) -> str:
        return " + ".join(self.names)

    @property
    def learns_labeled_rows(self) -> bool:
        return any(member.learns_labeled_rows for member in self.teachers)

    @property
    def members(self) -> list[Teacher]:
        return list(self.teachers)

    @functools.cached_property
    def fingerprint(self) -> str:
        members = [t.fingerprint for t in self.teachers]
        key = {"members": members, "weights": self.weights_setting, "folds": self.folds, "seed": self.seed}
        return "ensemble-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.combine([member.logits(texts, batch_size=batch_size) for member in self.teachers])

    def predictor(self):
        members = [member.predictor() for member in self.teachers]
        return lambda texts: self.combine([np.asarray(member(texts)) for member in members])

    def train(self) -> None:
        for member in self.teachers:
            member.train()

    def add_logits(self, dataset: Dataset, *, max_length: int = 64, batch_size: int = 64, cache_dir: str | None = None) -> Dataset:
        """Each member's logits cached on their own, then combined: a change of weights recomputes nothing."""
        members = [member.add_logits(dataset, max_length=max_length, batch_size=batch_size, cache_dir=cache_dir)["teacher_logits"]
                   for member in self.teachers]  # fmt: skip
        combined = self.combine([np.asarray(logits) for logits in members])
        fingerprint = Hasher.hash([dataset._fingerprint, self.fingerprint, max_length])
        return dataset.add_column("teacher_logits", combined.tolist(), new_fingerprint=fingerprint)

    def tempered(self, member_logits: Sequence[np.ndarray]) -> np.ndarray:
        """`[N, M, C]`: each member's logits divided by its `default_temperature`."""
        return np.stack([np.asarray(l, dtype=np.float64) / getattr(t, "default_temperature", 1.0)
                         for t, l in zip(self.teachers, member_logits)], axis=1)  # fmt: skip

    @property
    def weights(self) -> np.ndarray:
        """The members' weights (fitted on first use with "fit")."""
        if self._weights is None:
            if self.weights_setting == "mean":
                self._weights = np.full(len(self.teachers), 1 / len(self.teachers))
            else:
                self._weights = fit_mixture_weights(self.tempered(self.cross_fitted_logits()), np.asarray(self.labeled["label"]))
                logger.info("Teacher ensemble weights fitted on %d labeled rows (%d folds): %s", len(self.labeled),
                            self.folds, dict(zip(self.names, np.round(self._weights, 3))))  # fmt: skip
        return self._weights

    def cross_fitted_logits(self) -> list[np.ndarray]:
        """Each member's logits `[N, C]` on the labeled rows, every row predicted by the member made without it."""
        return [cross_fitted_logits(teacher, self.labeled, folds=self.folds, seed=self.seed) for teacher in self.teachers]

    def combine(self, member_logits: Sequence[np.ndarray]) -> np.ndarray:
        """`[N, C]` log-probabilities of the ensemble from each member's logits `[N, C]`."""
        return ensemble_log_probs(self.tempered(member_logits), self.weights).astype(np.float32)


def fit_mixture_weights(log_probs: np.ndarray, labels: np.ndarray, iterations: int = 200) -> np.ndarray:
    """The weights `[M]` of the mixture `sum_m w_m p_m(y | x)` that maximise the labels' log-likelihood, from the
    members' logits `[N, M, C]`: EM, which stays on the simplex and cannot decrease the likelihood."""
    probabilities = np.exp(log_probs - log_probs.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    of_label = probabilities[np.arange(len(labels)), :, labels]  # [N, M]
    weights = np.full(of_label.shape[1], 1 / of_label.shape[1])
    for _ in range(iterations):
        responsibility = weights * of_label
        responsibility /= responsibility.sum(1, keepdims=True).clip(1e-300)
        weights = responsibility.mean(0)
    return weights
