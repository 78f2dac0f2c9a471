"""Classification metrics for one model or a whole cohort, and the student selection rule.

Accuracy and macro-F1 are local `evaluate` modules (`nanonet_hf/evaluate_modules/`), loaded offline and combined with
`evaluate.combine`; `evaluate.load("accuracy")` would fetch its script from the Hub. Users can load them the same
way: `evaluate.load(nanonet_hf.metrics.evaluate_module("macro_f1"))`.
"""

import functools
import os

import evaluate
import numpy as np
from transformers import EvalPrediction

MODULES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_modules")


def evaluate_module(name: str) -> str:
    """Folder of one of nanonet's `evaluate` modules (`"accuracy"`, `"macro_f1"`), for `evaluate.load`."""
    path = os.path.join(MODULES_DIR, name)
    if not os.path.isfile(os.path.join(path, f"{name}.py")):
        raise ValueError(f"No evaluate module {name!r}; nanonet has {sorted(os.listdir(MODULES_DIR))}.")
    return path


@functools.cache
def classification_evaluator() -> evaluate.CombinedEvaluations:
    """Accuracy and macro-F1 in one `evaluate.combine`d evaluator; `compute(predictions=, references=, num_classes=)`."""
    return evaluate.combine([evaluate.load(evaluate_module("accuracy")), evaluate.load(evaluate_module("macro_f1"))])


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (mean over `num_classes` classes; a class never predicted nor present scores 0)."""
    predictions, labels = np.asarray(predictions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    scores = classification_evaluator().compute(predictions=predictions, references=labels, num_classes=num_classes)
    return {"accuracy": float(scores["accuracy"]), "macro_f1": float(scores["macro_f1"])}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis of `logits`."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ensemble_log_probs(logits: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The ensemble of several models' predictions `[N, M, C]` (logits or log-probabilities): the log of their
    probabilities' (weighted) mean, `[N, C]`. The one definition of an ensemble: of the students and of teachers."""
    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    weights = np.full(probabilities.shape[1], 1 / probabilities.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.log(np.clip(np.einsum("nmc,m->nc", probabilities, weights / weights.sum()), 1e-12, None))


def cohort_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Per-student, ensemble and best-student metrics from logits shaped `[N, K, C]`.

    Keys: `student_{k}_accuracy`, `student_{k}_macro_f1`, `ensemble_accuracy`, `ensemble_macro_f1` (the mean of the
    students' probabilities), `best_student` (index of the most accurate student, lowest index on ties) and
    `best_student_accuracy`, `best_student_macro_f1`.
    """
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2:  # a single model: [N, C]
        logits = logits[:, None, :]
    num_students, num_classes = logits.shape[1], logits.shape[2]
    metrics: dict[str, float] = {}
    per_student = [classification_metrics(logits[:, k].argmax(-1), labels, num_classes) for k in range(num_students)]
    for k, student in enumerate(per_student):
        metrics.update({f"student_{k}_{name}": value for name, value in student.items()})
    ensemble = classification_metrics(ensemble_log_probs(logits).argmax(-1), labels, num_classes)
    metrics.update({f"ensemble_{name}": value for name, value in ensemble.items()})
    best = int(np.argmax([student["accuracy"] for student in per_student]))
    metrics["best_student"] = best
    metrics.update({f"best_student_{name}": value for name, value in per_student[best].items()})
    return metrics


def agreement_choice(student_logits: np.ndarray, reference: np.ndarray) -> int:
    """Index of the student whose predictions (`[N, K, C]` logits) agree most with `reference` labels `[N]`.

    Used to pick a student without test labels: `reference` is the teacher's prediction on unlabeled rows (or the
    labels of the labeled rows). Ties go to the lowest index.
    """
    agreement = (np.asarray(student_logits).argmax(-1) == np.asarray(reference)[:, None]).mean(axis=0)  # [K]
    return int(np.argmax(agreement))
