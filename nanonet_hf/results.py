"""What a run produced: [`RunResults`], the schema of `results.json`, which the trainer writes and the card, the push,
the recipes and the benchmarks read; and the two measurements that fill it at the end of a run: the eval metrics of
the teacher, the students and their ensemble ([`collect_results`]), and the family table, every exported student
timed beside the teacher ([`family_table`]).
"""

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from .data import dataset_info, num_labeled
from .files import weights_mb, write_json
from .metrics import classification_metrics
from .speed import classifier_predictor, cpu, measure_speed

RESULTS_FILE = "results.json"
# what the card cannot do without
REQUIRED = ("students", "ensemble", "teacher", "chosen_student", "label_budget", "cohort", "label_names")


@dataclass
class RunResults:
    """A run's results, as `results.json` holds them. Metrics are `{"accuracy", "macro_f1"}` dicts on the eval set.

    Attributes:
        students (`list[dict]`): each student's metrics, in student order; `None` without an eval set.
        ensemble, teacher, supervised_only (`dict`): the students' ensemble's, the teacher's and (when trained) the
            supervised-only student's metrics.
        chosen_student (`int`): the student exported as `student/`; `selection` says how it was chosen.
        cohort (`dict`): K, each student's layers (`student_layers`) and depth (`depths`), adapters, steps.
        family (`list[dict]`): one row per exported student and one for the teacher: layers, parameters, metrics and
            speed on the run's CPU ([`family_table`]).
        tiers (`list[dict]`): with `export_formats`, the exported student as PyTorch, ONNX fp32, ONNX int8 and static
            model: path, size in MB, metrics, the export's checks, and speed timed beside the family.
        label_budget, training, wall_time_s (`dict`): the label budget, the training settings, the time of each phase.
    """

    students: list | None
    ensemble: dict | None
    teacher: dict | None
    chosen_student: int
    label_budget: dict
    cohort: dict
    label_names: list[str]
    dataset: str | None = None  # a built-in dataset's name, or the labeled file
    dataset_id: str | None = None  # the same data's Hub dataset id, for the card's front matter
    dataset_title: str | None = None  # a readable name of the data
    base_model: str | None = None
    teacher_name_or_path: str | None = None
    teachers: dict | None = None  # an ensemble's members, each alone
    teacher_weights: dict | None = None
    llm_calibration: dict | None = None  # an LLM teacher on the labeled rows, before and after calibration
    teacher_labeled: dict | None = None  # the teacher on the labeled rows beside the majority class (calibration.py)
    training_warning: str | None = None  # e.g. a collapse the supervised loss showed (fit_watch.py)
    supervised_only: dict | None = None
    selection: str | None = None
    examples: list[str] = field(default_factory=list)  # the shortest labeled text per class, for the card and the Space
    training: dict = field(default_factory=dict)
    learning_curve: dict | None = None
    hardware: str | None = None
    versions: dict = field(default_factory=dict)
    wall_time_s: dict = field(default_factory=dict)
    exported: dict | None = None
    family: list[dict] | None = None
    tiers: list[dict] | None = None  # the exported student's deployment formats (nanonet_hf.deploy.tiers)

    def __post_init__(self):
        if self.dataset_title is None:  # made by a run, or read from a results.json older than these fields
            self.dataset_id, self.dataset_title = dataset_info(self.dataset)

    @property
    def depths(self) -> list[int]:
        return self.cohort["depths"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, run_dir: str) -> None:
        write_json(os.path.join(run_dir, RESULTS_FILE), self.to_dict())

    @classmethod
    def from_dict(cls, values: dict, source: str = "results") -> "RunResults":
        missing = [key for key in REQUIRED if key not in values]
        if missing:
            raise ValueError(f"{source} lacks {missing}; pass the results.json of a `recipes/train.py` run.")
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def load(cls, run_dir: str) -> "RunResults":
        """`run_dir/results.json`, checked for the keys the card needs."""
        path = os.path.join(run_dir, RESULTS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: pass the output_dir of a finished `recipes/train.py` run.")
        with open(path) as handle:
            return cls.from_dict(json.load(handle), source=f"{path} (not written by `recipes/train.py` of this version?)")


def collect_results(trainer) -> RunResults:
    """The results of a [`MutualDistillationTrainer`] now: each student's, the ensemble's and the teacher's metrics on
    the eval set (evaluated now unless the last evaluation was at this step), the chosen student (chosen now if it
    was not), the label budget, the cohort and the training settings."""
    cohort = trainer.accelerator.unwrap_model(trainer.model)
    args, data = trainer.args, trainer.card_data
    eval_dataset = first_eval(trainer.eval_dataset)
    if eval_dataset is not None and data.eval_step != trainer.state.global_step:
        trainer.evaluate(eval_dataset, metric_key_prefix="test")
    chosen = trainer.chosen_student if trainer.chosen_student is not None else trainer.select_student()
    metrics, num_students = data.eval_metrics or {}, cohort.num_students
    rows = trainer.train_dataset
    labels = np.asarray(rows["labels"])
    labeled_count = num_labeled(rows)
    teacher = None
    if eval_dataset is not None and "text" in eval_dataset.column_names and (trainer.teacher or cohort.teacher):
        predictions = trainer.teacher_logits(eval_dataset).argmax(-1)
        teacher = classification_metrics(predictions, np.asarray(eval_dataset["labels"]), len(cohort.label_names))
    members = teacher_members(trainer, eval_dataset) if teacher is not None else {}
    texts = rows["text"] if "text" in rows.column_names else None
    examples = []  # the shortest labeled text of each class: the card's and the Space's examples
    for c in sorted(set(labels[:labeled_count].tolist())) if texts else []:
        examples.append(min((texts[i] for i in np.flatnonzero(labels[:labeled_count] == c)), key=len))

    def scores(prefix: str) -> dict | None:
        if f"{prefix}_accuracy" not in metrics:
            return None
        return {"accuracy": metrics[f"{prefix}_accuracy"], "macro_f1": metrics[f"{prefix}_macro_f1"]}

    wall = {**data.wall_time_s, "total_s": time.perf_counter() - trainer.started}
    return RunResults(
        dataset=data.dataset,
        base_model=data.base_model,
        teacher=teacher,
        teacher_name_or_path=data.teacher_name,
        teachers=members.get("metrics"),
        teacher_weights=members.get("weights"),
        llm_calibration=members.get("llm_calibration"),
        teacher_labeled=trainer.teacher_check,
        training_warning=trainer.fit_watch.message,
        students=[scores(f"student_{k}") for k in range(num_students)] if metrics else None,
        ensemble=scores("ensemble"),
        supervised_only=data.supervised_only,
        chosen_student=chosen,
        selection=data.selection,
        label_budget={
            "labels_per_class": data.labels_per_class, "labeled": labeled_count, "unlabeled": len(rows) - labeled_count,
            "generated": data.generated, "test": len(eval_dataset) if eval_dataset is not None else 0,
        },  # fmt: skip
        cohort={
            "num_students": num_students,
            "student_layers": cohort.student_layers,  # per student, the base's layers it keeps
            "depths": cohort.depths,
            "adapter_layers": args.adapter_layers,
            "shared_trunk_layers": cohort.shared_layers,
            "architecture": cohort.architecture.name,
            "new_weights": cohort.new_weights,  # not in the base's checkpoint: drawn from the seed, frozen, exported
            "adapter": cohort.adapter_type,
            "lora_r": args.lora_r,
            "lora_alpha": args.lora_alpha,
            "trainable_parameters_per_student": cohort.num_trainable_parameters(per_student=True),
            "steps": trainer.state.global_step,
        },
        label_names=cohort.label_names,
        examples=examples,
        training={
            "learning_rate": args.learning_rate,
            "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "unlabeled_ratio": args.unlabeled_ratio,
            "temperature": args.temperature,
            "teacher_temperature": trainer.teacher_temperature,
            "teacher_temperature_fit": trainer.teacher_calibration,  # "fit": what it was fitted from
            "lambda_kd": args.lambda_kd,
            "lambda_mut": args.lambda_mut,
            "mutual_weights": args.mutual_weights,
            "lambda_embedding": args.lambda_embedding,
            "mutual_loss": args.mutual_loss,
            "kd_weighting": args.kd_weighting,
            "student_views": args.student_views,
            "online_teacher": args.online_teacher,
            "max_length": args.max_length,
            "max_length_cut": trainer.cut_share,  # the share of labeled and unlabeled texts it cut
            "seed": args.seed,
        },
        learning_curve=learning_curves(trainer.state.log_history, num_students),
        hardware=_hardware(args),
        versions=package_versions("nanonet-hf", "transformers", "peft", "torch", "accelerate", "datasets"),
        wall_time_s={key: round(value, 1) for key, value in wall.items()},
    )


def teacher_members(trainer, eval_dataset) -> dict:
    """An ensemble's members' metrics on `eval_dataset` (each from its own cached logits), and an LLM teacher's (or
    LLM member's) accuracy on the labeled rows before and after calibration."""
    teacher = trainer.teacher
    members = teacher.members if teacher is not None else []
    found = {}
    report = next((r for r in (member.calibration_report() for member in members) if r is not None), None)
    if report is not None:
        found["llm_calibration"] = report
    if len(members) > 1:
        labels, num_labels = np.asarray(eval_dataset["labels"]), len(teacher.label_names)
        found["metrics"] = {}
        with trainer.args.main_process_first(desc="teacher logits"):
            for member in members:
                done = member.add_logits(eval_dataset.select_columns(["text"]), max_length=trainer.args.max_length)
                found["metrics"][member.name] = classification_metrics(np.asarray(done["teacher_logits"]).argmax(-1), labels, num_labels)
        found["weights"] = dict(zip(teacher.names, map(float, teacher.weights)))
    return found


def family_table(
    trainer, results: RunResults, folders: list[str], output_dir: str, tiers: list[dict] = (), tier_predictors: dict | None = None
) -> list[dict]:
    """One row per exported student (`folders`, in student order; one folder for a cohort of one): its layers,
    parameters, accuracy and macro-F1 on the eval set, and its speed on this machine's CPU (median ms per call at
    batch 1 and 32, texts per second), timed interleaved with the teacher (whose row comes last, `"teacher": True`).
    `args.speed_repeats=0` leaves the speed out.

    The deployment `tiers` of the exported student (rows of [`nanonet_hf.deploy.tiers.export_tiers`]) are timed in the
    same interleaved calls (`tier_predictors`, by row name); their first row, the PyTorch student, takes its family
    row's figures."""
    cohort = trainer.accelerator.unwrap_model(trainer.model)
    max_length = trainer.args.max_length
    students = [results.chosen_student] if len(folders) == 1 else list(range(cohort.num_students))
    rows, predictors = [], {}
    for k, folder in zip(students, folders):
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        scores = (results.students or [None] * cohort.num_students)[k] or {}
        rows.append({
            "name": f"student {k}", "student": k, "layers": cohort.depths[k], "layer_indices": cohort.student_layers[k],
            "parameters": model.num_parameters(), "accuracy": scores.get("accuracy"), "macro_f1": scores.get("macro_f1"),
            "dir": os.path.relpath(folder, output_dir), "size_mb": weights_mb(folder),
        })  # fmt: skip
        predictors[rows[-1]["name"]] = classifier_predictor(model, AutoTokenizer.from_pretrained(folder), max_length=max_length)
    online, teacher = cohort.teacher, trainer.teacher
    if teacher is not None or online is not None:
        size = _model_size(online) if online is not None else teacher.size()
        metrics = results.teacher or {}
        rows.append({"name": "teacher", "teacher": True, **size, "accuracy": metrics.get("accuracy"),
                     "macro_f1": metrics.get("macro_f1")})  # fmt: skip
        predictors["teacher"] = (  # an online teacher as it ended up
            classifier_predictor(online, trainer.processing_class, max_length=max_length) if online is not None
            else teacher.predictor()
        )  # fmt: skip
    predictors.update(tier_predictors or {})
    if trainer.args.speed_repeats > 0:
        speeds = measure_speed(predictors, _speed_texts(trainer.eval_dataset, trainer.train_dataset), repeats=trainer.args.speed_repeats)
        for row in [*rows, *tiers[1:]]:
            row.update(speeds[row["name"]], measured_on=cpu())
    if tiers:
        chosen = next(row for row in rows if row.get("student") == results.chosen_student)
        keys = ("accuracy", "macro_f1", "batch_1_ms", "batch_32_ms", "texts_per_s", "measured_on")
        tiers[0].update({key: chosen[key] for key in keys if key in chosen})
    return rows


def learning_curves(log_history: list[dict], num_students: int) -> dict | None:
    """Per-student (and ensemble) eval accuracy at each evaluation of a Trainer's `log_history`; None if none."""
    curves = {"step": [], "students": [[] for _ in range(num_students)], "ensemble": []}
    for entry in log_history:
        if "eval_student_0_accuracy" not in entry:
            continue
        curves["step"].append(entry["step"])
        for k in range(num_students):
            curves["students"][k].append(entry[f"eval_student_{k}_accuracy"])
        curves["ensemble"].append(entry.get("eval_ensemble_accuracy"))
    return curves if curves["step"] else None


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages among `names` (missing ones are left out), for cards and requirements."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _row(name: str, metrics: dict | None) -> str:
    if not metrics:
        return f"| {name:<28} |        - |        - |"
    return f"| {name:<28} | {100 * metrics['accuracy']:7.2f}% | {100 * metrics['macro_f1']:7.2f}% |"


def results_table(results: RunResults) -> str:
    """A run's results as a Markdown table: teacher, supervised-only student,
    each student (the exported one marked) and, for K > 1, the ensemble, accuracy and macro-F1 on the eval set."""
    lines = [f"| {'model':<28} | accuracy | macro-F1 |", f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|"]
    lines.append(_row("teacher", results.teacher))
    for name, metrics in (results.teachers or {}).items():  # an ensemble's members
        lines.append(_row(f"  {name[:26]}", metrics))
    depths = results.depths
    baseline = results.supervised_only
    if baseline:  # trained only on request (train_supervised_baseline)
        layers = f", {baseline['layers']} layers" if "layers" in baseline and len(set(depths)) > 1 else ""
        lines.append(_row(f"supervised-only student{layers}", baseline))
    for k, metrics in enumerate(results.students or []):
        layers = f", {depths[k]} layers" if len(set(depths)) > 1 else ""
        mark = " (exported)" if k == results.chosen_student else ""
        lines.append(_row(f"student {k}{layers}{mark}", metrics))
    if len(results.students or []) > 1:  # one student is its own ensemble
        lines.append(_row("ensemble of students", results.ensemble))
    return "\n".join(lines)


def family_markdown(results: RunResults) -> str | None:
    """The exported students beside the teacher (`results.family`): layers, parameters, accuracy, and their speed
    on the run's CPU with the speed-up over the teacher at batch 32, as a Markdown table; `None` when absent."""
    family = results.family
    if not family:
        return None
    teacher = next((row for row in family if row.get("teacher")), None)
    timed = "batch_32_ms" in family[0]
    head = "| model | layers | parameters | accuracy | macro-F1 |" + (" batch 1 ms | batch 32 ms | texts/s | vs teacher |" if timed else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in family:
        cells = [
            row["name"] + (" (exported)" if row.get("student") == results.chosen_student and not row.get("teacher") else ""),
            str(row["layers"]) if row.get("layers") is not None else "–",
            f"{row['parameters'] / 1e6:.1f}M" if row.get("parameters") else "–",
            f"{100 * row['accuracy']:.2f}%" if row.get("accuracy") is not None else "–",
            f"{100 * row['macro_f1']:.2f}%" if row.get("macro_f1") is not None else "–",
        ]
        if timed:
            speedup = teacher["batch_32_ms"] / row["batch_32_ms"] if teacher else None
            cells += [f"{row['batch_1_ms']:.1f}", f"{row['batch_32_ms']:.1f}", f"{row['texts_per_s']:.0f}",
                      f"{speedup:.1f}x" if speedup else "–"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if timed:
        lines.append(f"\nTimed on {family[0]['measured_on']}, tokenization included (median of the timed calls).")
    return "\n".join(lines)


def tiers_markdown(results: RunResults) -> str | None:
    """The exported student's deployment tiers (`results.tiers`): file, size, accuracy, speed on the run's CPU and
    its ratio to the PyTorch student and to the teacher at batch 32, as a Markdown table; `None` when absent."""
    tiers = results.tiers
    if not tiers:
        return None
    teacher = next((row for row in results.family or [] if row.get("teacher") and "texts_per_s" in row), None)
    timed = "texts_per_s" in tiers[0]
    head = "| tier | path | MB | accuracy |" + (" batch 1 ms | texts/s (batch 32) | vs PyTorch | vs teacher |" if timed else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in tiers:
        cells = [row["name"], f"`{row['path']}`", f"{row['size_mb']:.1f}",
                 f"{100 * row['accuracy']:.2f}%" if row.get("accuracy") is not None else "–"]  # fmt: skip
        if timed:
            cells += [f"{row['batch_1_ms']:.2f}", f"{row['texts_per_s']:.0f}", f"{row['texts_per_s'] / tiers[0]['texts_per_s']:.1f}x",
                      f"{row['texts_per_s'] / teacher['texts_per_s']:.1f}x" if teacher else "–"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_summary(results: RunResults) -> str:
    """One paragraph under the table: the label budget, the cohort, the chosen student, the wall time."""
    budget, cohort = results.label_budget, results.cohort
    return (
        f"{budget['labeled']} labels ({budget['labels_per_class']}/class), {budget['unlabeled']} unlabeled, "
        f"{budget['test']} test rows; {cohort['num_students']} student{'s' * (cohort['num_students'] != 1)}, {cohort['steps']} steps; student "
        f"{results.chosen_student} chosen by {results.selection}; wall time {results.wall_time_s['total_s']:.0f} s."
    )


def first_eval(eval_dataset):
    """The eval set the card reports: the dataset, or the first of a dict of them."""
    if isinstance(eval_dataset, dict):
        return next(iter(eval_dataset.values()), None)
    return eval_dataset


def _model_size(model: PreTrainedModel) -> dict:
    return {"layers": model.config.num_hidden_layers, "parameters": model.num_parameters()}


def _speed_texts(eval_dataset, train_dataset) -> list[str]:
    """Real texts to time the models on: the eval set's, else the training rows'."""
    for rows in (first_eval(eval_dataset), train_dataset):
        if rows is not None and "text" in rows.column_names and len(rows):
            return list(rows["text"])
    raise ValueError("No texts to time the exported students on (no `text` column); set speed_repeats=0.")


def _hardware(args) -> str:
    processes = f"{args.world_size} process(es)"
    if torch.cuda.is_available() and not args.use_cpu:
        return f"{torch.cuda.get_device_name(0)}, {processes}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()}), {processes}"
