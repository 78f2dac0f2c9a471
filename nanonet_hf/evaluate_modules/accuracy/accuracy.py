"""Accuracy as a local `evaluate` module: `evaluate.load` reads it from this folder, offline (the Hub's `accuracy`
is fetched from the Hub). See `nanonet_hf.metrics.classification_evaluator`."""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="The share of predictions equal to their reference (0 when there are none).",
            citation="",
            inputs_description="predictions, references: class ids; num_classes is accepted and unused.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_classes=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else 0.0}
