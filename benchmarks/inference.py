"""Inference latency and throughput of an exported student vs its teacher and the uncut base, side by side.

    python benchmarks/inference.py                        # half-depth student of the packaged MiniLM-L6 on TREC-6 texts
    python benchmarks/inference.py --teacher sentence-transformers/all-mpnet-base-v2   # also time the MPNet teacher
    python benchmarks/inference.py --tiny --repeats 3     # a tiny random BERT: a smoke run

The student is exported exactly as the recipe exports it (`export_student`: LoRA merged into the cut base, a plain
transformers folder) and loaded back with `AutoModelForSequenceClassification`; its weights are untrained, which does
not change its cost. The uncut base is the full-depth encoder with a classification head: the architecture of the
default teacher the recipe fine-tunes. Latency is the median over `--repeats` calls at batch 1 and at batch 32 on
real texts (padded to the longest in the batch, at most `--max-length` tokens); throughput is texts per second at
batch 32. The models are timed interleaved in one process.
"""

import argparse
import contextlib
import statistics
import tempfile
import time

import torch
from common import quiet_transformers, report  # benchmarks/common.py (the script's folder is on sys.path)
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from nanonet_hf.cohort import StudentCohort
from nanonet_hf.data import load_builtin_dataset
from nanonet_hf.export import export_student
from nanonet_hf.resources import resolve_model_path


def tiny_model(folder: str) -> str:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(folder)
    return folder


def timed(model, inputs: dict, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model(**inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(args, base_path: str, folder: str) -> dict:
    device = torch.device(args.device)
    id2label = {index: name for index, name in enumerate(load_builtin_dataset("trec6")["test"].features["label"].names)}
    texts = load_builtin_dataset("trec6")["test"]["text"]
    cohort = StudentCohort.from_pretrained(base_path, id2label=id2label, num_students=1, student_layers=args.student_layers)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    exported = export_student(cohort, 0, folder, tokenizer)
    del cohort

    models = {
        f"student ({args.student_layers} layers, exported)": (exported.student_dir, tokenizer),
        "uncut base = default teacher (full depth)": (base_path, tokenizer),
    }
    if args.teacher:
        teacher_path = resolve_model_path(args.teacher)  # a folder, or a packaged id such as the MPNet teacher's
        models["teacher " + args.teacher] = (teacher_path, AutoTokenizer.from_pretrained(teacher_path))
    loaded = {}
    for name, (path, model_tokenizer) in models.items():
        # the uncut base may carry a head for another label count (the --tiny model has 2): timing needs none of it
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(id2label), ignore_mismatched_sizes=True
        ).to(device).eval()
        loaded[name] = (model, model_tokenizer, sum(param.numel() for param in model.parameters()), model.config.num_hidden_layers)

    rows = {name: {"parameters": params, "layers": layers, "batch_1_ms": [], "batch_32_ms": []}
            for name, (_, _, params, layers) in loaded.items()}  # fmt: skip
    with torch.inference_mode():
        for repeat in range(args.warmup + args.repeats):
            for batch_size in (1, 32):
                start = (repeat * batch_size) % (len(texts) - batch_size)
                batch = texts[start : start + batch_size]
                for name, (model, model_tokenizer, _, _) in loaded.items():  # interleaved: same texts, same moment
                    inputs = model_tokenizer(batch, truncation=True, max_length=args.max_length, padding=True,
                                             return_tensors="pt").to(device)  # fmt: skip
                    seconds = timed(model, inputs, device)
                    if repeat >= args.warmup:
                        rows[name][f"batch_{batch_size}_ms"].append(seconds * 1000)
    reference = rows["uncut base = default teacher (full depth)"]
    for row in rows.values():
        for key in ("batch_1_ms", "batch_32_ms"):
            row[key] = statistics.median(row[key])
        row["texts_per_s"] = 32 / (row["batch_32_ms"] / 1000)
    for row in rows.values():
        row["speedup_batch_1"] = reference["batch_1_ms"] / row["batch_1_ms"]
        row["speedup_batch_32"] = reference["batch_32_ms"] / row["batch_32_ms"]
    return {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}


def markdown(result: dict) -> str:
    lines = ["| model | layers | parameters | batch 1 ms | batch 32 ms | texts/s | speed-up vs uncut (b1 / b32) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['layers']} | {row['parameters'] / 1e6:.1f}M | {row['batch_1_ms']:.1f} | "
            f"{row['batch_32_ms']:.1f} | {row['texts_per_s']:.0f} | {row['speedup_batch_1']:.2f}× / "
            f"{row['speedup_batch_32']:.2f}× |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--student-layers", type=int, default=3, help="depth of the student (default: half of 6)")
    parser.add_argument("--teacher", help="another teacher to time: a folder or a packaged id (the MPNet body)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the measurements to this file")
    args = parser.parse_args(argv)
    quiet_transformers()
    with tempfile.TemporaryDirectory() as folder, (
        tempfile.TemporaryDirectory() if args.tiny else contextlib.nullcontext()
    ) as tiny_folder:
        base_path = tiny_model(tiny_folder) if args.tiny else resolve_model_path(args.model_path)
        result = run(args, base_path, folder)
    report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
