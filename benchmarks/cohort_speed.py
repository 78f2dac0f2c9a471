"""Training-step time and peak memory of K students: the nanonet cohort vs the obvious alternatives, side by side.

    python benchmarks/cohort_speed.py                      # the packaged MiniLM-L6 base, K in 1 2 4 8, A in L/3 L/2 L
    python benchmarks/cohort_speed.py --tiny --steps 3     # a tiny random BERT: a smoke run in seconds
    python benchmarks/cohort_speed.py --json speed.json    # also write every measurement
    python benchmarks/cohort_speed.py --model sentence-transformers/all-mpnet-base-v2 --students 2 4   # another base
    python benchmarks/cohort_speed.py --depths 6 3 --no-memory   # a family: a 6-layer and a 3-layer student

Three ways to train K students on the same batch with the same losses (supervised on half the rows, distillation from
fixed teacher logits on the other half, mutual KL between students) and AdamW:

  (a) cohort  nanonet's StudentCohort: the frozen trunk below the A adapted layers runs once, the top A layers and the
              heads run as one mixed adapter batch of K×B rows.
  (b) loop    the obvious PEFT way: one PeftModel with K adapters, `set_adapter(k)` and a forward per student (of
              its own layers, with `--depths`), every student kept trainable, one backward through the K graphs.
  (c) full    classic deep mutual learning (as DisCo trains): K independent copies of the model (each of its own
              depth), fully trainable.

With `--depths`, the students differ in depth (K = the number of depths, each adapting its own top A layers): the
cohort sends each student's rows through its own layers only, in one forward.

Step times are medians over `--steps` steps; the three variants run interleaved in one process, so a slow moment of
the machine hits all of them. K full models do not depend on A, so they run in the largest-A group only, and every
row compares the cohort with them (across interleaving groups for smaller A). Peak memory is measured in a fresh
subprocess per variant (CUDA: max allocated; CPU: peak RSS above the RSS before the models were built): the cohort's
at every A, the loop's and the full models' at the largest A. Before timing, (a) and (b) are checked to give the same
loss and the same gradients on the first step.

With student k of d_k layers adapting its top a_k, a trunk of T layers shared by all, and a backward through a frozen
layer costing about one forward, the ideal step-time ratio of (b) over (a) is Σ_k (d_k + a_k) / (T + Σ_k (d_k − T) +
Σ_k a_k), printed beside the measured one; for K students of L layers each adapting A it is K·(L + A) / ((L − A) +
2·K·A).
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from common import query_value_lora, quiet_transformers, report  # benchmarks/common.py (the script's folder is on sys.path)
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from nanonet_hf.cohort import StudentCohort
from nanonet_hf.layer_plan import keep_layers, select_layers
from nanonet_hf.losses import cohort_loss
from nanonet_hf.resources import resolve_model_path

NUM_CLASSES = 6
VARIANTS = ("cohort", "loop", "full")


# ---- the three ways to train K students ----


class Setup:
    """Builds one variant for (K, A) with a fixed seed, so that (a) and (b) start from identical weights."""

    def __init__(self, model_path: str, num_layers: int | None, device: torch.device, depths: list[int] | None = None):
        self.model_path, self.device, self.depths = model_path, device, depths
        base_layers = AutoConfig.from_pretrained(model_path).num_hidden_layers
        self.kept = select_layers(base_layers, num_layers)
        self.num_layers = len(self.kept)

    def student_layers(self, num_students: int) -> list:
        """Each student's layers: its depth (`--depths`), or the kept layers for every student."""
        return list(self.depths) if self.depths else [",".join(map(str, self.kept))] * num_students

    def cohort(self, num_students: int, adapted: int) -> StudentCohort:
        torch.manual_seed(0)
        cohort = StudentCohort.from_pretrained(
            self.model_path,
            id2label={index: f"class_{index}" for index in range(NUM_CLASSES)},
            num_students=num_students,
            student_layers=self.student_layers(num_students),
            adapter_layers=adapted,
            lora_config=query_value_lora(self.model_path),
            seed=0,
        )
        return cohort.to(self.device).train()

    def full_models(self, num_students: int) -> torch.nn.ModuleList:
        models = torch.nn.ModuleList()
        for k in range(num_students):
            torch.manual_seed(k)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.model_path, num_labels=NUM_CLASSES, ignore_mismatched_sizes=True
            )
            keep_layers(model, list(range(self.depths[k])) if self.depths else self.kept)
            models.append(model)
        return models.to(self.device).train()

    def build(self, variant: str, num_students: int, adapted: int):
        """The trainable model and a function batch -> logits [B, K, C]."""
        if variant == "cohort":
            cohort = self.cohort(num_students, adapted)
            return cohort, lambda batch: cohort(**batch), cohort.release_routing
        if variant == "loop":
            cohort = self.cohort(num_students, adapted)  # same adapters and heads; run with PEFT's set_adapter

            def loop(batch):
                logits = []
                for name in cohort.student_names:  # set_adapter(name), the student's own layers, all kept trainable
                    with cohort.single_student(name) as model:
                        logits.append(model(**batch).logits)
                return torch.stack(logits, dim=1)

            return cohort, loop, lambda: None
        models = self.full_models(num_students)
        return models, lambda batch: torch.stack([model(**batch).logits for model in models], dim=1), lambda: None


def make_batch(vocab_size: int, batch_size: int, seq_len: int, device: torch.device, seed: int = 0, pad_id: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=generator)
    attention_mask[torch.arange(seq_len)[None, :] >= lengths[:, None]] = 0  # padded rows, so masks matter
    input_ids[attention_mask == 0] = pad_id
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    labels[batch_size // 2 :] = -100  # half the rows unlabeled
    teacher_logits = torch.randn(batch_size, NUM_CLASSES, generator=generator)
    model_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    return {
        "inputs": {key: value.to(device) for key, value in model_inputs.items()},
        "labels": labels.to(device),
        "teacher_logits": teacher_logits.to(device),
    }


def benchmark_batch(args, device: torch.device) -> dict:
    """The one batch every variant trains on: random tokens of the base's vocabulary, padded with its pad id."""
    config = AutoConfig.from_pretrained(args.model_path)
    return make_batch(config.vocab_size, args.batch_size, args.seq_len, device, pad_id=config.pad_token_id or 0)


def loss_of(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return cohort_loss(logits, batch["labels"], batch["teacher_logits"], temperature=2.0).total  # the trainer's loss


class Runner:
    """One variant ready to step: model, forward, AdamW over its trainable parameters."""

    def __init__(self, setup: Setup, variant: str, num_students: int, adapted: int):
        self.model, self.forward, self.after_backward = setup.build(variant, num_students, adapted)
        trainable = [param for param in self.model.parameters() if param.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        self.device = setup.device

    def loss_and_grads(self, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
        self.model.eval()  # dropout off, so that two ways of computing the same thing can be compared
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_of(self.forward(batch["inputs"]), batch)
        loss.backward()
        self.after_backward()
        grads = {name: param.grad.detach().clone() for name, param in self.model.named_parameters() if param.grad is not None}
        return loss.item(), grads

    def step(self, batch: dict) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_of(self.forward(batch["inputs"]), batch).backward()
        self.after_backward()
        self.optimizer.step()
        synchronize(self.device)
        return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_equivalence(setup: Setup, batch: dict, num_students: int, adapted: int) -> float:
    """Largest gradient difference between (a) and (b) on the first step; raises if the loss or a gradient differs."""
    loss_a, grads_a = Runner(setup, "cohort", num_students, adapted).loss_and_grads(batch)
    loss_b, grads_b = Runner(setup, "loop", num_students, adapted).loss_and_grads(batch)
    if set(grads_a) != set(grads_b):
        raise AssertionError(f"cohort and loop train different tensors: {sorted(set(grads_a) ^ set(grads_b))[:4]}")
    worst = max((grads_a[name] - grads_b[name]).abs().max().item() for name in grads_a)
    scale = max(grads_b[name].abs().max().item() for name in grads_b)
    if abs(loss_a - loss_b) > 1e-4 * max(1.0, abs(loss_b)) or worst > 1e-3 * max(scale, 1e-6):
        raise AssertionError(f"K={num_students} A={adapted}: loss {loss_a} vs {loss_b}, max grad diff {worst}")
    return worst


# ---- memory, each variant in its own process ----


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """VmHWM of this process. (Not ru_maxrss: Linux carries it over from the parent across fork + exec, so a
    probe started by a big benchmark process would report the parent's peak.)"""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def peak_memory_probe(args) -> None:
    """Run in a subprocess: build one variant, take two steps, print the peak memory in MiB."""
    device = torch.device(args.device)
    setup = Setup(args.model_path, args.num_layers, device, args.depths)
    batch = benchmark_batch(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = rss_mb()
    runner = Runner(setup, args.probe, args.probe_students, args.probe_adapted or None)  # 0: every layer of each student
    for _ in range(2):
        runner.step(batch)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        peak = peak_rss_mb() - before
    print(json.dumps({"peak_mb": peak}))


def peak_memory(args, variant: str, num_students: int, adapted: int) -> float:
    command = [
        sys.executable, __file__, "--probe", variant, "--probe-students", str(num_students),
        "--probe-adapted", str(adapted if adapted is not None else 0), "--model-path", args.model_path, "--device", args.device,
        "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
    ]  # fmt: skip
    if args.num_layers is not None:
        command += ["--num-layers", str(args.num_layers)]
    if args.depths:
        command += ["--depths", *map(str, args.depths)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {variant} K={num_students} A={adapted} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


# ---- the benchmark ----


def ideal_ratio(depths: list[int], adapted: list[int], trunk: int) -> float:
    """Loop over cohort for students of `depths` layers, student k adapting its top `adapted[k]`, with a shared trunk
    of `trunk` layers (prefix depths: student k runs layers 0 … d_k − 1)."""
    loop = sum(depth + top for depth, top in zip(depths, adapted))
    return loop / (trunk + sum(depth - trunk for depth in depths) + sum(adapted))


def tiny_model(folder: str) -> str:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def adapted_counts(num_layers: int, fractions: list[float]) -> list[int]:
    return sorted({max(1, round(num_layers * fraction)) for fraction in fractions})


def run(args) -> dict:
    device = torch.device(args.device)
    setup = Setup(args.model_path, args.num_layers, device, args.depths)
    num_layers = setup.num_layers
    counts = adapted_counts(num_layers, args.adapted_fractions)
    if args.depths:  # each student's top A layers, or every layer of each student (None: the library's default)
        counts = [None] + [count for count in adapted_counts(min(args.depths), args.adapted_fractions) if count < min(args.depths)]
    batch = benchmark_batch(args, device)
    rows = []
    for adapted in counts:
        for num_students in [len(args.depths)] if args.depths else args.students:
            grad_diff = check_equivalence(setup, batch, num_students, adapted)
            variants = [v for v in VARIANTS if v != "full" or adapted == counts[0 if args.depths else -1]]
            runners = {variant: Runner(setup, variant, num_students, adapted) for variant in variants}
            for _ in range(args.warmup):
                for runner in runners.values():
                    runner.step(batch)
            times = {variant: [] for variant in runners}
            for _ in range(args.steps):
                for variant, runner in runners.items():  # interleaved
                    times[variant].append(runner.step(batch))
            del runners
            depths = list(args.depths) if args.depths else [num_layers] * num_students
            trunk = setup.cohort(num_students, adapted).shared_layers
            row = {
                "K": num_students, "L": "+".join(map(str, depths)) if args.depths else num_layers,
                "A": "all" if adapted is None else adapted,
                "trunk": trunk, "max_grad_diff_vs_loop": grad_diff,
                **{f"{variant}_s": statistics.median(values) for variant, values in times.items()},
            }  # fmt: skip
            row["loop_over_cohort"] = row["loop_s"] / row["cohort_s"]
            row["ideal_loop_over_cohort"] = ideal_ratio(depths, depths if adapted is None else [adapted] * num_students, trunk)
            row["of_ideal"] = row["loop_over_cohort"] / row["ideal_loop_over_cohort"]
            if not args.no_memory:  # the cohort's at every A; the loop's and the full models' where all three run
                for variant in variants if "full" in variants else ["cohort"]:
                    row[f"{variant}_peak_mb"] = peak_memory(args, variant, num_students, adapted)
            rows.append(row)
            print_row(row, rows)
    for row in rows:
        base = next(r for r in rows if r["A"] == row["A"] and r["K"] == 1) if any(r["K"] == 1 for r in rows) else None
        if base is not None:
            row["cohort_over_K1"] = row["cohort_s"] / base["cohort_s"]
        # K full models do not depend on A: they are timed and probed once per K, in the largest-A group, and every
        # row of that K is compared with them (for smaller A the times come from another interleaving group)
        full = next((r for r in rows if r["K"] == row["K"] and "full_s" in r), None)
        if full is not None:
            row["full_over_cohort"] = full["full_s"] / row["cohort_s"]
            if "cohort_peak_mb" in row and "full_peak_mb" in full:
                row["cohort_over_full_memory"] = row["cohort_peak_mb"] / full["full_peak_mb"]
    return {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "seq_len": args.seq_len, "model": args.model_path, "rows": rows}  # fmt: skip


def print_row(row: dict, rows: list[dict]) -> None:
    print(
        f"K={row['K']} L={row['L']} A={row['A']}: cohort {row['cohort_s'] * 1000:.0f} ms, loop {row['loop_s'] * 1000:.0f} ms"
        f" ({row['loop_over_cohort']:.2f}x, ideal {row['ideal_loop_over_cohort']:.2f}x)"
        + (f", full {row['full_s'] * 1000:.0f} ms ({row['full_s'] / row['cohort_s']:.2f}x)" if "full_s" in row else ""),
        flush=True,
    )


def markdown(result: dict) -> str:
    memory = any("cohort_peak_mb" in row for row in result["rows"])
    head = ["K", "L", "A", "cohort ms", "loop ms", "loop/cohort", "ideal", "% of ideal", "cohort vs K=1", "full ms",
            "full/cohort"]  # fmt: skip
    if memory:
        head += ["cohort MiB", "loop MiB", "full MiB", "cohort/full mem"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(row, key, pattern, scale=1.0):
        return pattern.format(row[key] * scale) if key in row else "–"

    for row in result["rows"]:
        cells = [str(row["K"]), str(row["L"]), str(row["A"]), fmt(row, "cohort_s", "{:.0f}", 1000),
                 fmt(row, "loop_s", "{:.0f}", 1000), fmt(row, "loop_over_cohort", "{:.2f}×"),
                 fmt(row, "ideal_loop_over_cohort", "{:.2f}×"), fmt(row, "of_ideal", "{:.0%}"),
                 fmt(row, "cohort_over_K1", "{:.2f}×"), fmt(row, "full_s", "{:.0f}", 1000),
                 fmt(row, "full_over_cohort", "{:.2f}×")]  # fmt: skip
        if memory:
            cells += [fmt(row, "cohort_peak_mb", "{:.0f}"), fmt(row, "loop_peak_mb", "{:.0f}"),
                      fmt(row, "full_peak_mb", "{:.0f}"), fmt(row, "cohort_over_full_memory", "{:.2f}×")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random 6-layer BERT instead of the packaged base")
    parser.add_argument("--model", "--model-path", dest="model_path", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="base encoder: any supported architecture (nanonet_hf/architectures.py); packaged Hub ids "
                        "resolve offline")  # fmt: skip
    parser.add_argument("--num-layers", type=int, help="cut the base to its first N layers (L); default: all")
    parser.add_argument("--depths", type=int, nargs="+", help="students of these depths (K = their number), e.g. 6 3")
    parser.add_argument("--students", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--adapted-fractions", type=float, nargs="+", default=[1 / 3, 1 / 2, 1.0],
                        help="A as fractions of L; K independent full models are timed at the largest A only")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", help="also write the measurements to this file")
    # internal: one memory probe
    parser.add_argument("--probe", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--probe-students", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-adapted", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_transformers()
    if args.probe:
        peak_memory_probe(args)
        return
    with tempfile.TemporaryDirectory() if args.tiny else contextlib.nullcontext() as folder:
        args.model_path = tiny_model(folder) if args.tiny else resolve_model_path(args.model_path)
        result = run(args)
    print()
    report(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
