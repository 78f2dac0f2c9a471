"""The model card of a published student, rendered from a run's `results.json` with the Jinja template in
`model_cards/student_card.md`, and the learning-curve picture it shows.

`write_model_card(run_dir)` writes `README.md` and `learning_curve.png` into the exported `student/` folder; the push
helper renders the card again with the repository id, so that its how-to-load snippet names the repository.
"""

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from importlib.resources import files

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainerCallback

from ..deploy.onnx_export import FP32_TOLERANCE
from ..results import RunResults

CARD_TEMPLATE = "student_card.md"
LEARNING_CURVE_FILE = "learning_curve.png"
TAGS = ["nanonet", "mutual-distillation", "peft", "knowledge-distillation", "text-classification"]
logger = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

# results.json wall-time keys -> words for the card
PHASES = {
    "teacher_s": "teacher (fine-tune and logits)",
    "cohort_train_s": "cohort training (with its evaluations)",
    "supervised_train_s": "supervised-only baseline",
    "export_s": "export",
    "total_s": "total",
}


@dataclass
class CardData:
    """What the card tells beyond the trained weights, gathered during a run: the trainer fills most of it (and
    [`CardDataCallback`] the evaluations and timings); a caller may name the dataset and the label budget.

    Attributes:
        dataset (`str`, *optional*): a built-in dataset's name (the card links its Hub page) or a file name.
        labels_per_class (`int`, *optional*): the label budget, when the labeled rows were drawn per class.
        generated (`int`): unlabeled texts written by a language model.
    """

    dataset: str | None = None
    labels_per_class: int | None = None
    generated: int = 0
    base_model: str | None = None
    teacher_name: str | None = None
    selection: str | None = None
    supervised_only: dict | None = None
    wall_time_s: dict = field(default_factory=dict)
    eval_metrics: dict | None = None  # the last evaluation's metrics, keys without their prefix
    eval_step: int | None = None


class CardDataCallback(TrainerCallback):
    """Keeps the card's data current during training (SetFit's pattern): the last evaluation's per-student and
    ensemble metrics, and the training time."""

    def __init__(self, card_data: CardData):
        self.card_data = card_data
        self._began = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        if self._began is not None:
            self.card_data.wall_time_s["cohort_train_s"] = time.perf_counter() - self._began

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        key = next((key for key in metrics or {} if key.endswith("student_0_accuracy")), None)
        if key is None:
            return
        prefix = key[: -len("student_0_accuracy")]  # "eval_", "test_", or "eval_{name}_" for a dict of eval sets
        self.card_data.eval_metrics = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        self.card_data.eval_step = state.global_step


def short_example(text: str, max_chars: int = 200) -> str:
    """`text` cut after the last whole word within `max_chars` characters: a card's snippet shows a sentence, not a
    whole document."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    return text[:max_chars].rsplit(" ", 1)[0] + " ..."


def template_path(name: str = CARD_TEMPLATE) -> str:
    """Path of a card template; `model_cards/` is installed as the package `nanonet_hf.model_cards`."""
    return str(files("nanonet_hf.model_cards").joinpath(name))


def read_results(run_dir: str) -> RunResults:
    """`run_dir/results.json` ([`RunResults.load`]), checked for what the card needs."""
    return RunResults.load(run_dir)


def plot_learning_curves(curves: dict, path: str, chosen_student: int | None = None) -> str:
    """Save each student's accuracy over steps as a PNG at `path` (needs matplotlib: `pip install nanonet-hf[hub]`)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("The learning-curve picture needs matplotlib: pip install 'nanonet-hf[hub]'") from error

    figure = Figure(figsize=(6, 3.6), dpi=120)  # no pyplot: no global figure state, no GUI backend
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for k, accuracies in enumerate(curves["students"]):
        label = f"student {k}" + (" (published)" if k == chosen_student else "")
        axes.plot(curves["step"], [100 * a for a in accuracies], marker="o", linewidth=2.2 if k == chosen_student else 1.2, label=label)
    if len(curves["students"]) > 1 and all(value is not None for value in curves["ensemble"]):
        axes.plot(curves["step"], [100 * a for a in curves["ensemble"]], "k--", linewidth=1, label="ensemble")
    axes.set_xlabel("training step")
    axes.set_ylabel("test accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _margin(accuracy: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy measured on n rows."""
    return 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(n, 1))


def _per_student(value: int | list[int], k: int) -> int:
    return value[k] if isinstance(value, list) else value


def _family_rows(family: list[dict] | None, this: int) -> list[dict] | None:
    """The family table's rows for the card: each exported student (this one marked) and the teacher, with their
    speed relative to the teacher's at batch 32 when both were timed."""
    if not family:
        return None
    teacher = next((row for row in family if row.get("teacher")), None)
    rows = []
    for row in family:
        shown = dict(row)
        shown["this"] = row.get("student") == this and not row.get("teacher")
        if teacher and teacher.get("batch_32_ms") and row.get("batch_32_ms"):
            shown["speedup"] = teacher["batch_32_ms"] / row["batch_32_ms"]
        rows.append(shown)
    return rows


def model_card(
    results: "RunResults | dict",
    model_id: str,
    *,
    learning_curve_file: str | None = None,
    license: str | None = "apache-2.0",
    architecture: str = "AutoModelForSequenceClassification",
    student: int | None = None,
) -> ModelCard:
    """Render a student's card from a run's results.

    Args:
        results ([`RunResults`] or `dict`): the run's `results.json`.
        model_id (`str`): the repository id (or local folder) that the how-to-load snippet names.
        learning_curve_file (`str`, *optional*): file name of the learning-curve picture beside the card.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the license of the published weights; it must agree
            with the base model's and the data's.
        student (`int`, *optional*): the student the card is for (a member of the family, `students/student_{k}`);
            defaults to the chosen one.
    """
    if isinstance(results, dict):
        results = RunResults.from_dict(results)
    chosen = results.chosen_student
    this = chosen if student is None else student
    student_scores = results.students[this]
    dataset_id, dataset_pretty = results.dataset_id, results.dataset_title
    base_model = results.base_model
    base_is_hub_id = bool(base_model) and HUB_ID.match(base_model) is not None and not os.path.exists(base_model)
    model_name = model_id.rstrip("/").split("/")[-1]

    def evals(metric_type: str, metric_name: str, value: float, args: dict | None = None) -> EvalResult:
        return EvalResult(
            task_type="text-classification",
            task_name="Text Classification",
            dataset_type=dataset_id or "custom",
            dataset_name=dataset_pretty,
            dataset_split="test",
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(value, 4),
            metric_args=args,
        )

    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model if base_is_hub_id else None,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers",
        pipeline_tag="text-classification",
        license=license,
        tags=TAGS,
        metrics=["accuracy", "f1"],
        eval_results=[
            evals("accuracy", "Accuracy", student_scores["accuracy"]),
            evals("f1", "Macro F1", student_scores["macro_f1"], {"average": "macro"}),
        ],
    )
    depths = results.depths
    table = [dict(name="teacher", **results.teacher)] if results.teacher else []
    for name, metrics in (results.teachers or {}).items():  # an ensemble's members, each alone
        table.append(dict(name=f"teacher member: {name}", **metrics))
    if results.supervised_only:
        baseline = results.supervised_only
        layers = f" ({baseline['layers']} layers)" if "layers" in baseline and len(set(depths)) > 1 else ""
        table.append(dict(name=f"supervised-only student{layers}", accuracy=baseline["accuracy"], macro_f1=baseline["macro_f1"]))
    for k, metrics in enumerate(results.students):
        name = f"student {k} ({depths[k]} layers)" if len(set(depths)) > 1 else f"student {k}"
        table.append(dict(name=f"**{name} (this model)**" if k == this else name, **metrics))
    if len(results.students) > 1 and results.ensemble:  # one student is its own ensemble
        table.append(dict(name=f"ensemble of the {len(results.students)} students", **results.ensemble))

    examples = results.examples or ["An example text to classify."]
    training = results.training or {}
    return ModelCard.from_template(
        card_data,
        template_path=template_path(),
        model_id=model_id,
        model_name=model_name,
        base_model=base_model if base_is_hub_id else None,
        base_model_path=base_model,
        dataset_id=dataset_id,
        dataset_pretty=dataset_pretty,
        label_names=results.label_names,
        budget=results.label_budget,
        cohort=results.cohort,
        num_layers=depths[this],
        layers=results.cohort["student_layers"][this],
        depths=depths,
        this_student=this,
        trainable_parameters=_per_student(results.cohort["trainable_parameters_per_student"], this),
        family=_family_rows(results.family, this),
        teacher_name=results.teacher_name_or_path or "a classifier with the same labels",
        chosen_student=chosen,
        selection=results.selection or "the run's selection rule",
        architecture=architecture,
        training=training,
        results_table=table,
        learning_curve_file=learning_curve_file,
        wall_time=[(PHASES.get(key, key), seconds) for key, seconds in (results.wall_time_s or {}).items()],
        has_supervised=bool(results.supervised_only),
        hardware=results.hardware,
        example_text=repr(short_example(examples[0])),  # a Python string literal, newlines and quotes escaped
        margin=_margin(student_scores["accuracy"], results.label_budget["test"]),
        max_length=training.get("max_length", "max_length"),
        versions=results.versions or {},
        training_warning=results.training_warning,
        teacher_labeled=results.teacher_labeled,
        **_tier_rows(results.tiers if this == chosen else None, model_id),
    )


def _tier_rows(tiers: list[dict] | None, model_id: str) -> dict:
    """The card's tiers table and the files its snippets load: in the repository (`onnx/`, `static/`, as the push lays
    them out), or beside a local student folder (`../student_static`)."""
    if not tiers:
        return {"tiers": None}
    on_hub = HUB_ID.match(model_id) is not None and not os.path.exists(model_id)
    rows, files = [], {}
    for tier in tiers:
        path = tier["path"]
        if tier["format"] == "static":
            file = "static/" if on_hub else os.path.join(os.path.dirname(model_id.rstrip("/")), path)
            checked = f"agrees with the teacher on {100 * tier['held_out_agreement_with_teacher']:.1f}% of {tier['held_out_rows']} held-out unlabeled rows"
            files["static_dir"] = file
        else:
            file = path.split("/", 1)[1] if "/" in path else path  # relative to the student folder
            checked = "–"
            if tier["format"] == "onnx":
                checked = f"logits within {tier['fp32_max_abs_diff']:.1e} on {tier['check_rows']} rows"
            elif tier["format"] == "onnx-int8":
                checked = f"same class on {100 * tier['int8_agreement']:.1f}% of {tier['check_rows']} rows"
            if tier["format"] != "pytorch":
                files["onnx_file"] = file  # the int8 model when there is one (it comes last)
        rows.append({**tier, "file": file, "checked": checked})
    return {"tiers": rows, "on_hub": on_hub, "tiers_tolerance": FP32_TOLERANCE, **files}


def write_model_card(
    run_dir: str,
    target_dir: str | None = None,
    model_id: str | None = None,
    license: str | None = "apache-2.0",
    student: int | None = None,
) -> ModelCard:
    """Write `README.md` (and `learning_curve.png` when the run evaluated during training) into `target_dir`.

    Args:
        run_dir (`str`): output_dir of a `recipes/train.py` run (holds `results.json` and `student/`).
        target_dir (`str`, *optional*): where to write; defaults to `run_dir/student`.
        model_id (`str`, *optional*): repository id for the how-to-load snippet; defaults to `target_dir`.
        student (`int`, *optional*): the student of the card (a member of the family); defaults to the chosen one.
    """
    results = read_results(run_dir)
    target_dir = target_dir or os.path.join(run_dir, "student")
    this = results.chosen_student if student is None else student
    curve_file = None
    if results.learning_curve:
        try:
            plot_learning_curves(results.learning_curve, os.path.join(target_dir, LEARNING_CURVE_FILE), this)
            curve_file = LEARNING_CURVE_FILE
        except ImportError as error:
            logger.warning("The card is written without its learning curve: %s", error)
    else:
        logger.info("No evaluation during training (eval_strategy='no'): the card has no learning curve.")
    card = model_card(results, model_id or target_dir, learning_curve_file=curve_file, license=license, student=student)
    card.save(os.path.join(target_dir, "README.md"))
    return card
