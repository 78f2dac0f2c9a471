"""The deployment tiers of a run's exported student, written by `save_model()` with `export_formats`: the PyTorch
student itself, its ONNX graph (fp32) and dynamic int8 model ([`export_onnx`]), and a static Model2Vec student
([`train_static_student`]). Each tier's row holds its accuracy on the eval set, its size, and (filled by the family
table, which times every model side by side) its speed; `results.json` keeps them as `tiers`.
"""

import logging
import os

import numpy as np
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ..data import num_labeled
from ..files import atomic_directory, weights_mb
from ..metrics import classification_metrics, ensemble_log_probs, softmax
from ..results import first_eval
from ..speed import classifier_predictor
from .onnx_export import FP32_FILE, INT8_FILE, ONNX_DIR, OnnxClassifier, export_onnx
from .static_student import HELD_OUT, STATIC_DIR, train_static_student

logger = logging.getLogger(__name__)

TIER_NAMES = {"pytorch": "PyTorch", "onnx": "ONNX fp32", "onnx-int8": "ONNX int8", "static": "static (Model2Vec)"}


def check_static_pool(formats: list[str], num_unlabeled: int) -> None:
    """A static student learns from the teacher's labels of the unlabeled pool: refused without one."""
    if "static" in formats and num_unlabeled == 0:
        raise ValueError("export_formats 'static' trains the static student on the teacher's labels of the unlabeled "
                         "pool, and this run has no unlabeled rows: pass unlabeled_dataset (--unlabeled_file).")


def export_tiers(trainer, student_dir: str, output_dir: str, static_rows: tuple | None = None) -> tuple[list[dict], dict]:
    """Write every format of `trainer.args.export_formats` for the exported student in `student_dir`; returns the
    tiers' rows (the PyTorch student first) and a predictor for each new tier (texts in, scores out), keyed by the
    row's name, for the family table to time. `static_rows` are the static student's ([`static_training_rows`],
    computed by every process of a distributed run beforehand)."""
    args = trainer.args
    formats, label_names = args.export_formats, trainer.accelerator.unwrap_model(trainer.model).label_names
    eval_rows = first_eval(trainer.eval_dataset)
    eval_texts = list(eval_rows["text"]) if eval_rows is not None else None
    eval_labels = np.asarray(eval_rows["labels"]) if eval_rows is not None else None
    rows = [_row("pytorch", os.path.join(student_dir, "model.safetensors"), output_dir)]
    predictors = {}

    def scored(row: dict, predict) -> dict:
        if eval_texts is not None:
            scores = np.concatenate([np.asarray(predict(eval_texts[i : i + 256])) for i in range(0, len(eval_texts), 256)])
            row.update(classification_metrics(scores.argmax(-1), eval_labels, len(label_names)))
        predictors[row["name"]] = predict
        return row

    if "onnx" in formats or "onnx-int8" in formats:
        check_texts = eval_texts or list(trainer.train_dataset["text"])[num_labeled(trainer.train_dataset) :]  # the pool
        record = export_onnx(student_dir, check_texts, int8="onnx-int8" in formats, max_length=args.max_length)
        written = [("onnx", FP32_FILE, "fp32")]  # the int8 model is quantized from the fp32 one, which is kept
        written += [("onnx-int8", INT8_FILE, "int8")] if "onnx-int8" in formats else []
        for name, file, kind in written:
            check = {key: value for key, value in record.items() if key.startswith(kind)}
            row = _row(name, os.path.join(student_dir, ONNX_DIR, file), output_dir, check_rows=record["check_rows"], **check)
            rows.append(scored(row, tier_predictor(row, output_dir, max_length=args.max_length)))
    if "static" in formats:
        texts, targets, held_out = static_rows or static_training_rows(trainer)
        static, record = train_static_student(student_dir, texts, targets, label_names, held_out=held_out,
                                                max_length=args.max_length, seed=args.seed)  # fmt: skip
        folder = os.path.join(output_dir, STATIC_DIR)
        with atomic_directory(folder) as tmp:
            static.save_pretrained(tmp)
        row = _row("static", folder, output_dir, **record)
        rows.append(scored(row, tier_predictor(row, output_dir, max_length=args.max_length)))
    return rows, predictors


def tier_predictor(row: dict, output_dir: str, *, max_length: int | None):
    """What serves a tier of `results.tiers` (run in `output_dir`): texts in, class scores `[N, C]` out, tokenization
    included. The trainer times and scores the tiers with it, and `benchmarks/inference.py` times a finished run's."""
    path = os.path.join(output_dir, row["path"])
    if row["format"] == "static":
        from model2vec.inference import StaticModelPipeline

        static = StaticModelPipeline.from_pretrained(path)
        return lambda texts: static.predict_proba(texts, use_multiprocessing=False)
    student_dir = os.path.dirname(os.path.dirname(path)) if row["format"] != "pytorch" else os.path.dirname(path)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    if row["format"] == "pytorch":
        model = AutoModelForSequenceClassification.from_pretrained(student_dir)
        return classifier_predictor(model, tokenizer, max_length=max_length or tokenizer.model_max_length)
    return OnnxClassifier(path, tokenizer, max_length=max_length)


def fastest_tier(results) -> str:
    """The format of a run's fastest exported tier at batch 1 (`results.tiers`); `"pytorch"` when it has none or
    they were not timed."""
    timed = [row for row in results.tiers or [] if "batch_1_ms" in row]
    return min(timed, key=lambda row: row["batch_1_ms"])["format"] if timed else "pytorch"


def static_training_rows(trainer) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The static student's rows: every training row's text, its soft target (a labeled row's class one-hot; an
    unlabeled row's teacher probabilities at the temperature the students learned from, or the students' ensemble's
    without cached teacher logits), and the held-out mark (a seeded tenth of the unlabeled rows)."""
    rows, num_labels = trainer.train_dataset, len(trainer.accelerator.unwrap_model(trainer.model).label_names)
    texts, labels = list(rows["text"]), np.asarray(rows["labels"])
    labeled = labels >= 0
    if "teacher_logits" in rows.column_names:
        probabilities = softmax(np.asarray(rows["teacher_logits"], dtype=np.float64) / trainer.teacher_temperature)
    else:  # no offline teacher: the cohort's ensemble on the unlabeled rows
        probabilities = np.exp(ensemble_log_probs(trainer.predict(Dataset.from_dict({"text": texts})).predictions))
    targets = np.where(labeled[:, None], np.eye(num_labels)[np.where(labeled, labels, 0)], probabilities)
    held_out = np.zeros(len(texts), dtype=bool)
    pool = np.flatnonzero(~labeled)
    chosen = np.random.default_rng(trainer.args.seed).choice(pool, size=max(1, int(HELD_OUT * len(pool))), replace=False)
    held_out[chosen] = True
    return texts, targets.astype(np.float32), held_out


def _row(tier: str, path: str, output_dir: str, **extra) -> dict:
    return {"name": TIER_NAMES[tier], "format": tier, "path": os.path.relpath(path, output_dir), "size_mb": weights_mb(path), **extra}
