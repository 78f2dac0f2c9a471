"""Inference latency and throughput of exported students of several depths vs their teacher, side by side.

    python benchmarks/inference.py                          # MiniLM-L6 students of 6, 3, 2 layers vs the SetFit MPNet teacher
    python benchmarks/inference.py --run_dir runs/trec6     # the family a finished run exported, with its accuracies
    python benchmarks/inference.py --run_dir runs/trec6 runs/rt   # + the tiers they exported (export_formats), one table each
    python benchmarks/inference.py --also sentence-transformers/all-MiniLM-L6-v2   # + SetFit on the students' body
    python benchmarks/inference.py --tiny --repeats 3       # a tiny random BERT: a smoke run

The students are exported exactly as the trainer exports them (`export_family`: each student's LoRA merged into the
base cut to its own layers, a plain transformers folder) and loaded back with `AutoModelForSequenceClassification`;
without `--run_dir` their weights are untrained, which does not change their cost. The teacher is timed as it labels
texts: a SetFit body encodes them (its logistic head's share is negligible), a classifier folder runs its forward.
Every model is timed by `nanonet_hf.speed.measure_speed`, the function the trainer uses for the family table of
`results.json`: texts in, logits out (tokenization included), interleaved, the median over `--repeats` calls at
batch 1 and at batch 32 of real TREC-6 test questions; throughput is texts per second at batch 32.
"""

import argparse
import contextlib
import os
import tempfile

import torch
from common import quiet_transformers, report  # benchmarks/common.py (the script's folder is on sys.path)
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from nanonet_hf import SetFitTeacher
from nanonet_hf.cohort import StudentCohort
from nanonet_hf.data import load_builtin_dataset
from nanonet_hf.deploy.tiers import tier_predictor
from nanonet_hf.export import export_family
from nanonet_hf.files import weights_mb
from nanonet_hf.resources import resolve_model_path
from nanonet_hf.results import RunResults
from nanonet_hf.speed import classifier_predictor, cpu, measure_speed


def tiny_model(folder: str) -> str:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(folder)
    return folder


def teacher_predictor(name_or_path: str, labeled, max_length: int):
    """How the teacher labels texts, and its parameter count: a classifier folder's forward, or a SetFit body's
    encoding (`SetFitTeacher.predictor`, the trainer's own timing of a SetFit teacher)."""
    path = resolve_model_path(name_or_path)
    if any(name.endswith("ForSequenceClassification") for name in AutoConfig.from_pretrained(path).architectures or []):
        model = AutoModelForSequenceClassification.from_pretrained(path)
        return classifier_predictor(model, AutoTokenizer.from_pretrained(path), max_length=max_length), model.num_parameters()
    predict = SetFitTeacher(path, labeled, max_length=max_length).predictor()
    return predict, AutoModel.from_pretrained(path).num_parameters()


def run(args, base_path: str, folder: str, run_dir: str | None = None) -> dict:
    """One table: the students (a finished run's, with their accuracy and its deployment tiers, or untrained ones
    exported here) and the teacher, timed side by side on the run's test texts."""
    results = RunResults.load(run_dir) if run_dir else None
    dataset = results.dataset if results else "trec6"
    max_length = (results.training.get("max_length") if results else None) or args.max_length
    data = load_builtin_dataset(dataset)
    texts = list(data["test"]["text"])
    rows, predictors = {}, {}
    if results:
        students = [row for row in results.family if not row.get("teacher")]
        folders = [os.path.join(run_dir, row["dir"]) for row in students]
        accuracy = {os.path.join(run_dir, row["dir"]): row.get("accuracy") for row in students}
    else:
        id2label = dict(enumerate(data["test"].features["label"].names))
        cohort = StudentCohort.from_pretrained(
            base_path, id2label=id2label, num_students=len(args.depths), student_layers=args.depths
        )
        folders = export_family(cohort, folder, AutoTokenizer.from_pretrained(base_path))
        accuracy = {}
        del cohort
    for path in folders:
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        name = f"student, {model.config.num_hidden_layers} layers"
        rows[name] = {"layers": model.config.num_hidden_layers, "parameters": model.num_parameters(),
                      "accuracy": accuracy.get(path), "size_mb": weights_mb(path)}  # fmt: skip
        predictors[name] = classifier_predictor(model, AutoTokenizer.from_pretrained(path), max_length=max_length)
    exported = f"student, {results.depths[results.chosen_student]} layers" if results else None
    for tier in (results.tiers or [])[1:] if results else []:  # the PyTorch student is its row above
        name = f"{exported}, {tier['name']}"
        rows[name] = {"layers": rows[exported]["layers"] if tier["format"] != "static" else 0, "parameters": None,
                      "accuracy": tier.get("accuracy"), "size_mb": tier["size_mb"]}  # fmt: skip
        predictors[name] = tier_predictor(tier, run_dir, max_length=max_length)
    labeled = data["train"].select(range(12))
    others = [("teacher " + args.teacher, args.teacher)] if args.teacher else []
    teacher_row = next((row for row in results.family if row.get("teacher")), {}) if results else {}
    for name, model in others + [(f"SetFit {model}" if "/" in model else model, model) for model in args.also]:
        predictors[name], parameters = teacher_predictor(model, labeled, max_length)
        rows[name] = {"layers": AutoConfig.from_pretrained(resolve_model_path(model)).num_hidden_layers,
                      "parameters": parameters, "size_mb": 4 * parameters / 1e6,  # fp32 weights
                      "accuracy": teacher_row.get("accuracy") if name.startswith("teacher") else None}  # fmt: skip
    speeds = measure_speed(predictors, texts, repeats=args.repeats, warmup=args.warmup)
    for name, row in rows.items():
        row.update(speeds[name])
    teacher = rows.get("teacher " + args.teacher) if args.teacher else None
    for row in rows.values():
        if teacher:
            row["speedup_batch_1"] = teacher["batch_1_ms"] / row["batch_1_ms"]
            row["speedup_batch_32"] = teacher["batch_32_ms"] / row["batch_32_ms"]
    return {"dataset": dataset, "max_length": max_length, "device": cpu(), "torch": torch.__version__, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['dataset']} test texts, at most {result['max_length']} tokens:", "",
             "| model | layers | MB | accuracy | batch 1 ms | batch 32 ms | texts/s | vs teacher (b1 / b32) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in result["rows"].items():
        speedup = f"{row['speedup_batch_1']:.1f}× / {row['speedup_batch_32']:.1f}×" if "speedup_batch_1" in row else "–"
        accuracy = f"{100 * row['accuracy']:.2f}" if row.get("accuracy") is not None else "–"
        lines.append(
            f"| {name} | {row['layers']} | {row['size_mb']:.1f} | {accuracy} | {row['batch_1_ms']:.2f} | "
            f"{row['batch_32_ms']:.1f} | {row['texts_per_s']:.0f} | {speedup} |"
        )
    return "\n".join(lines) + f"\n\nTimed on {result['device']}, tokenization included."


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default="sentence-transformers/all-MiniLM-L6-v2", help="the students' base")
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 3, 2], help="the students' depths")
    parser.add_argument("--run_dir", nargs="+", help="time the family and the tiers that finished runs exported (each "
                        "its own table, on its dataset's test split)")
    parser.add_argument("--teacher", default="sentence-transformers/all-mpnet-base-v2",
                        help="the teacher to time: a SetFit body or a classifier folder ('' for none)")  # fmt: skip
    parser.add_argument("--also", nargs="*", default=[], help="more models to time the same way as the teacher")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--json", help="also write the measurements to this file")
    args = parser.parse_args(argv)
    quiet_transformers()
    with tempfile.TemporaryDirectory() as folder, (
        tempfile.TemporaryDirectory() if args.tiny else contextlib.nullcontext()
    ) as tiny_folder:
        base_path = tiny_model(tiny_folder) if args.tiny else resolve_model_path(args.model_path)
        if args.tiny and args.teacher == parser.get_default("teacher"):
            args.teacher = base_path  # the tiny base's own classifier stands in for the teacher
        results = [run(args, base_path, folder, run_dir) for run_dir in args.run_dir or [None]]
    result = results[0] if len(results) == 1 else {"runs": results}
    report(result, "\n\n".join(markdown(one) for one in results), args.json)


if __name__ == "__main__":
    main()
