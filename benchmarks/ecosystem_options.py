"""What the ecosystem's speed options buy the cohort's training step, measured side by side, and where its time goes.

    python benchmarks/ecosystem_options.py                    # MiniLM-L6 base, K=4, LoRA on the top 3 of 6 layers
    python benchmarks/ecosystem_options.py --tiny --steps 2   # smoke run on a tiny random BERT
    python benchmarks/ecosystem_options.py --json options.json --profile profile.txt

The batches are real TREC-6 questions (8 labeled + 24 unlabeled rows, as the default run), tokenized per batch. Every
variant trains the same cohort from the same weights on the same batches, interleaved step by step, so a slow moment
of the machine hits all of them; the table gives the median step and its ratio to the baseline:

- baseline   SDPA attention (transformers' default), fp32, dynamic padding (to the batch's longest text)
- eager      the eager (matmul + softmax) attention instead of SDPA
- pad-64     every batch padded to max_length 64 (what a fixed-shape pipeline does) instead of dynamic padding
- grouped    batches whose texts have similar lengths (Trainer's group_by_length idea: sort a window of 50 batches by
             length, then cut) — less padding per batch
- bf16       torch.autocast(bfloat16) around forward and loss (CPU: needs AVX512-BF16/AMX to pay)
- compile    torch.compile(cohort) on the pad-64 batches (with dynamic padding every new length recompiles: ~50 s a
             step even on a tiny model), to be read against pad-64; steady state, the compile time reported apart

`--profile PATH` also writes torch.profiler's table of the baseline step (top operators by self CPU time).
TF32 is a CUDA-only switch (`--tf32` in TrainingArguments); this script reports it only on a GPU.
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch
from common import query_value_lora, quiet_transformers, report  # benchmarks/common.py (the script's folder is on sys.path)
from transformers import AutoConfig, AutoTokenizer

from nanonet_hf.cohort import StudentCohort
from nanonet_hf.data import load_trec6
from nanonet_hf.losses import cohort_loss
from nanonet_hf.resources import resolve_model_path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cohort_speed import tiny_model

NUM_CLASSES = 6


def batches(tokenizer, count: int, batch_size: int, grouped: bool, pad_to: int | None, vocab_size: int, seed: int = 0) -> list[dict]:
    """`count` batches of real TREC questions; half the rows labeled, teacher logits random but fixed."""
    texts = load_trec6()["train"]["text"]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=generator)[: count * batch_size].tolist()
    if grouped:  # sort windows of 50 batches by length, then cut them into batches (and shuffle the batches)
        window = 50 * batch_size
        order = [i for start in range(0, len(order), window) for i in sorted(order[start : start + window], key=lambda i: len(texts[i]))]
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if grouped:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    result = []
    for chunk in chunks:
        padding = "max_length" if pad_to else True
        inputs = tokenizer([texts[i] for i in chunk], truncation=True, max_length=64, padding=padding, return_tensors="pt")
        inputs["input_ids"] %= vocab_size  # the tiny model's vocabulary is smaller
        labels = torch.randint(0, NUM_CLASSES, (len(chunk),), generator=generator)
        labels[len(chunk) // 4 :] = -100
        result.append({"inputs": dict(inputs), "labels": labels, "teacher_logits": torch.randn(len(chunk), NUM_CLASSES, generator=generator)})
    return result


def loss_of(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return cohort_loss(logits.float(), batch["labels"], batch["teacher_logits"], temperature=2.0).total  # the trainer's


class Variant:
    def __init__(self, name: str, model_path: str, batches_: list[dict], *, attention: str = "sdpa", bf16: bool = False, compile_: bool = False):
        self.name, self.batches, self.bf16 = name, batches_, bf16
        torch.manual_seed(0)
        self.cohort = StudentCohort.from_pretrained(
            model_path, id2label={i: f"c{i}" for i in range(NUM_CLASSES)}, num_students=4, adapter_layers=3,
            lora_config=query_value_lora(model_path), seed=0,
        )  # fmt: skip
        self.cohort.peft_model.get_base_model().set_attn_implementation(attention)
        self.cohort.train()
        self.forward = torch.compile(self.cohort) if compile_ else self.cohort
        self.optimizer = torch.optim.AdamW([p for p in self.cohort.parameters() if p.requires_grad], lr=1e-4)
        self.times: list[float] = []
        self.compile_s = None
        if compile_:
            began = time.perf_counter()
            self.step(0, record=False)
            self.compile_s = time.perf_counter() - began

    def step(self, index: int, record: bool = True) -> None:
        batch = self.batches[index % len(self.batches)]
        began = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            loss = loss_of(self.forward(**batch["inputs"]), batch)
        loss.backward()
        self.cohort.release_routing()
        self.optimizer.step()
        if record:
            self.times.append(time.perf_counter() - began)


def profile_step(variant: Variant, path: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    variant.step(0, record=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for index in range(3):
            variant.step(index, record=False)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    with open(path, "w") as handle:
        handle.write(f"torch.profiler, 3 training steps of the baseline cohort ({variant.name}), top 20 operators by self CPU time\n\n{table}\n")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    quiet_transformers()
    with tempfile.TemporaryDirectory() as scratch:
        model_path = tiny_model(scratch) if args.tiny else resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
        vocab_size = AutoConfig.from_pretrained(model_path).vocab_size
        dynamic = batches(tokenizer, args.steps + 1, args.batch_size, grouped=False, pad_to=None, vocab_size=vocab_size)
        fixed = batches(tokenizer, args.steps + 1, args.batch_size, grouped=False, pad_to=64, vocab_size=vocab_size)
        specs = {
            "baseline": dict(batches_=dynamic),
            "eager": dict(batches_=dynamic, attention="eager"),
            "pad-64": dict(batches_=fixed),
            "grouped": dict(batches_=batches(tokenizer, args.steps + 1, args.batch_size, grouped=True, pad_to=None, vocab_size=vocab_size)),
            "bf16": dict(batches_=dynamic, bf16=True),
            "compile (pad-64)": dict(batches_=fixed, compile_=True),
        }
        variants = [Variant(name, model_path, **spec) for name, spec in specs.items() if name not in args.skip]
        for variant in variants:
            variant.step(0, record=False)  # warm-up
        for index in range(1, args.steps + 1):  # interleaved: step i of every variant, then step i + 1
            for variant in variants:
                variant.step(index)
        tokens = {name: statistics.mean(int(b["inputs"]["attention_mask"].shape[1]) for b in spec["batches_"]) for name, spec in specs.items() if name not in args.skip}
        base = statistics.median(variants[0].times)
        rows = []
        for variant in variants:
            median = statistics.median(variant.times)
            rows.append({"variant": variant.name, "median_ms": 1000 * median, "speedup": base / median,
                         "padded_length": tokens[variant.name], "compile_s": variant.compile_s})  # fmt: skip
        lines = [
            f"K=4 students, LoRA r=8 on the top 3 of 6 layers, batch {args.batch_size}, {args.steps} interleaved steps, "
            f"torch {torch.__version__}, {os.cpu_count()} CPU cores",
            "",
            "| variant | median step ms | speed-up vs baseline | mean padded length | compile s |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            compile_s = f"{row['compile_s']:.1f}" if row["compile_s"] is not None else "–"
            lines.append(f"| {row['variant']} | {row['median_ms']:.0f} | {row['speedup']:.2f}× | {row['padded_length']:.1f} | {compile_s} |")
        if args.profile:
            profile_step(variants[0], args.profile)
            lines.append(f"\nProfile of the baseline step: {args.profile}")
        report({"rows": rows, "steps": args.steps, "batch_size": args.batch_size}, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
