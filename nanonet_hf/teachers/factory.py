"""The one place that tells teacher kinds apart: what a run's teacher is, checked before any work, and built.

`plan_teacher` reads what the user gave (`teacher_model`: nothing, a folder or Hub id, a model trained along, or a
[`Teacher`]) and the config (`teacher_type`, `setfit_body`, the LLM's settings, `teacher_temperature`), decides the
kind, and refuses what cannot work, naming the value, before any weight trains. `build_teacher` then makes the
teacher: SetFit on `setfit_body` (trained on first use), a fine-tune of the base, the LLM, or their ensemble.
"""

import logging
import os
from dataclasses import dataclass

from datasets import Dataset
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..resources import check_model_path, resolve_model_path
from .base import Teacher
from .calibration import check_cross_fitting, fold_teachers
from .classifier import ClassifierTeacher, check_teacher, train_teacher
from .ensemble import TeacherEnsemble
from .llm import DEFAULT_PROMPT, LLMTeacher
from .setfit import SetFitTeacher

logger = logging.getLogger(__name__)

KINDS = ("setfit", "fine_tune", "llm")


def teacher_kind(teacher_model, args) -> str:
    """"setfit", "fine_tune" (a transformers classifier, trained here when none is given), "llm", "ensemble" or kinds
    joined by "+" (an ensemble the run builds): an in-memory teacher's own kind, else `args.teacher_type`, else for
    "auto" what `teacher_model` is: a `...ForSequenceClassification` checkpoint, an in-memory model or an online
    teacher is a classifier, a `...ForCausalLM` an LLM; nothing, or any other body, gets SetFit."""
    if isinstance(teacher_model, Teacher):
        return teacher_model.kind
    if args.teacher_type != "auto":
        return args.teacher_type
    if isinstance(teacher_model, PreTrainedModel) or args.online_teacher:
        return "fine_tune"
    if teacher_model is None:
        return "setfit"
    architectures = AutoConfig.from_pretrained(teacher_model).architectures or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "fine_tune"
    return "llm" if any(name.endswith("ForCausalLM") for name in architectures) else "setfit"


@dataclass
class TeacherPlan:
    """A run's teacher, decided and checked before any work.

    Attributes:
        kind (`str`): see [`teacher_kind`].
        given: the user's `teacher_model` (a folder id resolved to its folder), or `None`.
        llm ([`LLMTeacher`], *optional*): an LLM teacher (or member) the run builds, made here to check its tokenizer,
            prompt and verbalizers (it loads its weights only when logits are asked for).
    """

    kind: str
    given: "str | PreTrainedModel | Teacher | None"
    llm: LLMTeacher | None = None

    @property
    def kinds(self) -> list[str]:
        return self.kind.split("+")


def plan_teacher(
    teacher_model, args, labeled: Dataset | None, tokenizer: PreTrainedTokenizerBase | None
) -> TeacherPlan:
    """Decide the run's teacher and check it before any work: a classifier's labels and tokenizer, an in-memory
    teacher's labels, an LLM teacher's tokenizer, prompt and verbalizers, the SetFit body's package, and the settings
    that need a kind of teacher (`teacher_temperature="fit"`, `lambda_embedding`, `online_teacher`). `labeled`: the raw
    labeled rows, `None` for tokenized rows. `args`: a [`MutualDistillationConfig`]."""
    label_names = list(labeled.features["label"].names) if labeled is not None else None
    explicit_llm = args.teacher_type == "llm" or isinstance(teacher_model, LLMTeacher)
    if isinstance(teacher_model, (str, os.PathLike)) and not explicit_llm:
        teacher_model = resolve_model_path(str(teacher_model))
        check_model_path(teacher_model, "teacher_model (--teacher_name_or_path)")
    plan = TeacherPlan(kind=teacher_kind(teacher_model, args), given=teacher_model)
    kinds = plan.kinds
    weights = args.ensemble_weights()
    if len(kinds) > 1 and isinstance(weights, list) and len(weights) != len(kinds):
        raise ValueError(f"teacher_ensemble_weights {weights} give {len(weights)} weights for the {len(kinds)} "
                         f"teachers of teacher_type={plan.kind!r}.")  # fmt: skip
    if len(kinds) > 1 and teacher_model is not None:
        raise ValueError(
            f"teacher_type={plan.kind!r} builds every member itself (SetFit and the fine-tune on the base, the LLM "
            "from llm_teacher); pass no teacher_model, or a TeacherEnsemble of your own teachers."
        )
    if label_names is not None and isinstance(teacher_model, Teacher) and teacher_model.label_names != label_names:
        raise ValueError(f"The teacher {teacher_model.name} predicts labels {teacher_model.label_names}, but the "
                         f"data's labels are {label_names}.")  # fmt: skip
    # a classifier folder: its labels and tokenizer (a SetFit body has no label space yet)
    if isinstance(teacher_model, (str, os.PathLike)) and label_names is not None and plan.kind == "fine_tune":
        teacher_tokenizer = check_teacher(teacher_model, label_names)
        if args.online_teacher and tokenizer is not None and teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"online_teacher: the teacher {teacher_model} tokenizes differently from the students' base; an "
                "online teacher reads the students' token ids. Drop online_teacher to distil from its cached "
                "logits instead."
            )
    if args.online_teacher and plan.kind != "fine_tune":
        raise ValueError(f"online_teacher trains a transformers classifier along; teacher_type={plan.kind!r} cannot be.")
    embeds = teacher_model.has_embeddings if isinstance(teacher_model, Teacher) else plan.kind in ("setfit", "fine_tune")
    if args.lambda_embedding > 0 and (not embeds or args.online_teacher):
        raise ValueError(
            f"lambda_embedding={args.lambda_embedding} distils the teacher's sentence embeddings, which "
            f"{'an online' if args.online_teacher else 'a ' + repr(plan.kind)} teacher does not cache; "
            "use teacher_type 'setfit' or 'fine_tune' (offline), or lambda_embedding=0."
        )
    if "setfit" in kinds and teacher_model is None and args.setfit_body and label_names is not None and (
        args.lambda_kd > 0 or args.lambda_embedding > 0
    ):
        resolve_model_path(args.setfit_body)  # the SetFit teacher's body: a missing package is named here
    if args.teacher_temperature == "fit":
        if label_names is None or plan.kind not in ("setfit", "llm") or args.online_teacher:
            raise ValueError(
                "teacher_temperature='fit' fits the temperature on the teacher's cross-fitted predictions of raw "
                f"labeled rows, retraining it on folds of them: a SetFit or LLM teacher, not "
                f"{'tokenized rows' if label_names is None else repr(plan.kind)}"
                f"{' (online)' if args.online_teacher else ''}. Give teacher_temperature as a number."
            )
        check_cross_fitting(labeled)
    if "llm" in kinds and label_names is not None and not isinstance(teacher_model, LLMTeacher):
        plan.llm = LLMTeacher(
            str(teacher_model or args.llm_teacher), labeled, verbalizers=args.verbalizers,
            prompt=args.llm_prompt or DEFAULT_PROMPT, examples_per_class=args.llm_examples_per_class,
            calibration=args.llm_calibration, use_chat_template=args.llm_chat_template, seed=args.seed,
            max_length=args.max_length or 128,
        )  # fmt: skip
    return plan


@dataclass
class BuiltTeacher:
    """What `build_teacher` made: the teacher whose logits the students learn from (`None`: no distillation), the
    model trained along with an online teacher, and how the card names the teacher."""

    teacher: Teacher | None
    online: "PreTrainedModel | str | None"
    name: str | None


def build_teacher(plan: TeacherPlan, args, labeled: Dataset, *, base: str, base_name: str | None) -> BuiltTeacher:
    """Make the run's teacher from `plan`: the user's, or one trained on the labeled rows (SetFit on
    `args.setfit_body`, in memory and trained on first use; a full fine-tune of `base` saved to
    `output_dir/teacher`; the LLM; their ensemble). `base`: the students' base folder; `base_name`: how it was named."""
    given = plan.given
    if given is None and args.lambda_kd == 0 and args.lambda_embedding == 0 and not args.online_teacher:
        return BuiltTeacher(None, None, None)  # no distillation: no teacher is made (a supervised-only run)
    if isinstance(given, PreTrainedModel):
        if not args.online_teacher:
            raise ValueError("An in-memory teacher_model is trained along (online_teacher=True); for cached "
                             "logits, save it (save_pretrained) and pass its folder.")
        return BuiltTeacher(None, given, None)
    if isinstance(given, Teacher):
        return BuiltTeacher(given, None, given.name)
    members, names = [], []
    for kind in plan.kinds:
        member, name = _member(kind, plan, args, labeled, base=base, base_name=base_name)
        members.append(member)
        names.append(name)
    if len(members) == 1:
        teacher = members[0]
    else:
        teacher = TeacherEnsemble(members, weights=args.ensemble_weights(), labeled=labeled, seed=args.seed)
    return BuiltTeacher(teacher, teacher.path if args.online_teacher else None, " + ".join(names))


def _member(kind: str, plan: TeacherPlan, args, labeled: Dataset, *, base: str, base_name: str | None):
    """One teacher of `kind` ("setfit", "llm", "fine_tune") and its name for the card."""
    given = plan.given
    if kind == "llm":
        return plan.llm, plan.llm.name
    if kind == "setfit":
        named = given or args.setfit_body
        body = resolve_model_path(named) if given is None and named else (named or base)
        teacher = SetFitTeacher(body, labeled, num_iterations=args.setfit_iterations, max_length=args.max_length,
                                seed=args.seed, progress_bar=not args.disable_tqdm)  # fmt: skip
        return teacher, f"SetFit ({args.setfit_iterations} pair iterations) on {named or base_name or base}"
    if given is not None:
        return ClassifierTeacher(given, max_length=args.max_length), str(given)
    folder = train_teacher(
        base, labeled, os.path.join(args.output_dir, "teacher"), num_train_epochs=args.teacher_num_train_epochs,
        learning_rate=args.teacher_learning_rate, max_length=args.max_length, seed=args.seed,
    )  # fmt: skip
    teacher = ClassifierTeacher(folder, max_length=args.max_length)
    teacher.learns_labeled_rows = True
    return teacher, "fine-tuned full-depth base (this run)"


def temperature_setting(teacher: Teacher | None, args, labeled: Dataset | None) -> "float | str | None":
    """`args.teacher_temperature`, or when it is unset and the teacher is SetFit alone (offline), "fit": a SetFit
    head's confidence depends on its body (under-confident on a small one, nearly calibrated on a large one, where a
    fixed sharpening made near one-hot targets), so its temperature is fitted on the labeled rows, unless a class has
    fewer labeled rows than the folds need; then its fixed default stays."""
    if args.teacher_temperature is not None or not isinstance(teacher, SetFitTeacher) or args.online_teacher:
        return args.teacher_temperature
    try:
        check_cross_fitting(labeled)
    except ValueError as error:
        logger.warning("The SetFit teacher's temperature stays %s instead of being fitted: %s",
                       teacher.default_temperature, error)  # fmt: skip
        return None
    return "fit"


def teachers_to_train(teacher: Teacher, labeled: Dataset, *, fit_temperature: bool, seed: int) -> list[Teacher]:
    """Every teacher the run may train, in a fixed order: the teacher's members, and the fold teachers that
    cross-fitting remakes from the labeled rows (an ensemble's fitted weights, a fitted temperature)."""
    found = list(teacher.members)
    if isinstance(teacher, TeacherEnsemble) and teacher.weights_setting == "fit":
        for member in teacher.members:
            found += [t for _, t in fold_teachers(member, teacher.labeled, folds=teacher.folds, seed=teacher.seed)]
    if fit_temperature:
        found += [t for _, t in fold_teachers(teacher, labeled, seed=seed)]
    return found
