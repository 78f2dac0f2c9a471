"""Offline classification metrics for one model or a whole cohort.

`evaluate.load("accuracy")` fetches its script from the Hub, so these are computed with numpy.
"""

import numpy as np
from transformers import EvalPrediction


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (mean over `num_classes` classes; a class never predicted nor present scores 0)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    accuracy = float((predictions == labels).mean()) if len(labels) else 0.0
    f1s = []
    for c in range(num_classes):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1s))}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


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
    ensemble = classification_metrics(_softmax(logits).mean(axis=1).argmax(-1), labels, num_classes)
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
