"""Train a tiny cohort with checkpoints every 2 steps; used by tests/test_resume.py as a process to SIGKILL.

    python tests/scripts/train_tiny.py MODEL_DIR OUTPUT_DIR [--kill-at-step N] [--resume]

With --kill-at-step N the process sends itself SIGKILL at the end of step N, after the checkpoint of step N-1
(no Python cleanup runs: like the OOM killer or a preempted node). The final trainable weights go to
OUTPUT_DIR/final.safetensors.
"""

import argparse
import os
import signal
import sys

import safetensors.torch
import torch
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoTokenizer, TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nanonet_hf import MutualDistillationConfig, MutualDistillationTrainer, StudentCohort  # noqa: E402
from nanonet_hf.data import sample_per_class, tokenize, training_dataset  # noqa: E402
from nanonet_hf.mutual_distillation_trainer import last_complete_checkpoint  # noqa: E402
from tests.conftest import LABELS, make_texts  # noqa: E402


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    texts, labels = make_texts(20, seed=0)
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    pool = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    labeled, rest = sample_per_class(pool, 4, seed=0)
    train = training_dataset(labeled, rest.remove_columns("label"))
    generator = torch.Generator().manual_seed(0)
    train = train.add_column("teacher_logits", (3 * torch.randn(len(train), 3, generator=generator)).tolist())
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    train = tokenize(train, tokenizer, 16)

    config = MutualDistillationConfig(
        output_dir=args.output_dir, max_steps=8, per_device_train_batch_size=8, num_students=3, learning_rate=1e-2,
        save_strategy="steps", save_steps=2, logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True,
        seed=0, student_layers=[3, 1, "0,2"],  # students of different depths on the tiny 3-layer base
    )  # fmt: skip
    cohort = StudentCohort.from_pretrained(
        args.model_dir, id2label=dict(enumerate(LABELS)), num_students=3, lora_config=config.lora_config(),
        student_layers=config.student_layers, seed=0,
    )  # fmt: skip
    # Dropout in the frozen base, so that every step draws random numbers: resuming must restore the RNG too. (Not
    # LoRA dropout: PEFT's mixed batch visits the adapters in `set` order, which depends on PYTHONHASHSEED, so
    # its dropout masks differ between two processes even with one seed.)
    for name, module in cohort.named_modules():
        if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:
            module.p = 0.1
    callbacks = [KillAt(args.kill_at_step)] if args.kill_at_step else []
    trainer = MutualDistillationTrainer(
        model=cohort, args=config, train_dataset=train, processing_class=tokenizer, callbacks=callbacks
    )
    if args.resume:
        print(f"resuming from {os.path.basename(last_complete_checkpoint(args.output_dir))}", flush=True)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    safetensors.torch.save_file(cohort.trainable_state_dict(), os.path.join(args.output_dir, "final.safetensors"))


if __name__ == "__main__":
    main()
