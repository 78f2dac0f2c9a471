"""Macro-F1 over a fixed number of classes as a local `evaluate` module (offline). Unlike scikit-learn's default, a
class that is neither predicted nor present scores 0 and still counts in the mean: with few labels a student that
never predicts a class must not be rewarded for it. See `nanonet_hf.metrics.classification_evaluator`."""

import datasets
import evaluate
import numpy as np


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="The mean over num_classes classes of each class's F1 (0 for a class never predicted nor present).",
            citation="",
            inputs_description="predictions, references: class ids; num_classes: the size of the label space.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_classes=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if num_classes is None:
            num_classes = int(max(predictions.max(initial=-1), references.max(initial=-1)) + 1)
        scores = []
        for c in range(num_classes):
            tp = np.sum((predictions == c) & (references == c))
            fp = np.sum((predictions == c) & (references != c))
            fn = np.sum((predictions != c) & (references == c))
            scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return {"macro_f1": float(np.mean(scores)) if scores else 0.0}
