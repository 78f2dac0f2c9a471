"""What the length of the texts costs: the students' training step and the SetFit teacher's training, at several
max_length, on long documents (the built-in `political_speeches`: 2012 party convention speeches), side by side.

    python benchmarks/long_texts.py --json benchmarks/results/long_texts_cpu.json
    python benchmarks/long_texts.py --lengths 64 128 --steps 3 --setfit_lengths 64   # a quicker look

First the length the run would choose from the data (the library's `resolve_max_length`: the 95th percentile of the
labeled rows' token lengths, capped by the base) and the share of texts each length cuts. Then, per length, the median
time of a training step of the default cohort (a 6-layer and a 3-layer student on all-MiniLM-L6-v2, batch 32:
8 labeled + 24 unlabeled rows; distillation reads cached teacher logits, so a step costs the same without them, and
these steps run without a teacher) and the time SetFit takes to train on the labeled rows (`--setfit_body`, 10 pair
iterations, the body cut at that length). Lengths run interleaved with nothing else on the machine.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from common import quiet_transformers, report  # benchmarks/common.py (the script's folder is on sys.path)
from transformers import AutoConfig, AutoTokenizer, TrainerCallback

from nanonet_hf import MutualDistillationConfig, MutualDistillationTrainer, SetFitTeacher, prepare_data
from nanonet_hf.base_model import max_tokens
from nanonet_hf.data import resolve_max_length, token_lengths
from nanonet_hf.resources import resolve_model_path


class StepTimes(TrainerCallback):
    """Wall time of every optimizer step."""

    def __init__(self):
        self.times, self.started = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)


def student_step_seconds(model: str, data, max_length: int, steps: int, scratch: str) -> float:
    """Median seconds per training step (after the first) of the default cohort at `max_length`."""
    args = MutualDistillationConfig(
        output_dir=os.path.join(scratch, f"students-{max_length}"), max_steps=steps + 1, max_length=max_length,
        lambda_kd=0.0, save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000,
    )  # fmt: skip
    timer = StepTimes()
    trainer = MutualDistillationTrainer(model=model, args=args, train_dataset=data.labeled, unlabeled_dataset=data.unlabeled,
                                        callbacks=[timer])  # fmt: skip
    trainer.train()
    return statistics.median(timer.times[1:])


def setfit_seconds(body: str, labeled, max_length: int) -> float:
    """Seconds SetFit takes to train on `labeled` with its body cut at `max_length` tokens."""
    teacher = SetFitTeacher(resolve_model_path(body), labeled, num_iterations=10, max_length=max_length)
    started = time.perf_counter()
    teacher.train()
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--setfit_body", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--labels_per_class", type=int, default=10)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--setfit_lengths", type=int, nargs="*", default=[64, 256, 512])
    parser.add_argument("--steps", type=int, default=5, help="timed student steps per length (after one warm-up)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    quiet_transformers()

    data = prepare_data(dataset="political_speeches", labels_per_class=args.labels_per_class, seed=0)
    model = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    cap = max_tokens(AutoConfig.from_pretrained(model), tokenizer)
    chosen, _ = resolve_max_length(None, tokenizer, cap, data.labeled, data.unlabeled)
    labeled_lengths, pool_lengths = token_lengths(data.labeled["text"], tokenizer), token_lengths(data.unlabeled["text"], tokenizer)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for length in sorted(set(args.lengths) | set(args.setfit_lengths)):
            row = {"max_length": length, "labeled_cut": float((labeled_lengths > length).mean()),
                   "unlabeled_cut": float((pool_lengths > length).mean())}  # fmt: skip
            if length in args.lengths:
                row["student_step_s"] = student_step_seconds(model, data, length, args.steps, scratch)
            if length in args.setfit_lengths:
                row["setfit_train_s"] = setfit_seconds(args.setfit_body, data.labeled, length)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    first = next(row for row in rows if "student_step_s" in row)
    table = [
        f"political_speeches: {len(data.labeled)} labeled, {len(data.unlabeled)} unlabeled texts; tokens (MiniLM "
        f"tokenizer) median {int(np.median(pool_lengths))}, 95th percentile of the labeled {int(np.quantile(labeled_lengths, 0.95))}; "
        f"a run chooses max_length {chosen} (the base takes {cap}).",
        "",
        "| max_length | labeled texts cut | unlabeled cut | student step (s) | vs shortest | SetFit teacher training (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        step = row.get("student_step_s")
        table.append(
            f"| {row['max_length']} | {row['labeled_cut']:.0%} | {row['unlabeled_cut']:.0%} | "
            + (f"{step:.2f} | {step / first['student_step_s']:.1f}× | " if step else "| | ")
            + (f"{row['setfit_train_s']:.0f} |" if "setfit_train_s" in row else " |")
        )
    result = {"model": args.model, "setfit_body": args.setfit_body, "chosen_max_length": chosen, "cap": cap,
              "steps": args.steps, "rows": rows}  # fmt: skip
    report(result, "\n".join(table), args.json)
    return result


if __name__ == "__main__":
    main()
