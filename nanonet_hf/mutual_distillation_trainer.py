import logging
import os
import platform
import re
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import safetensors.torch
import torch
from datasets import Dataset
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME

from .cohort import StudentCohort, check_base, check_cohort_matches
from .data import (
    MODEL_INPUT_NAMES,
    CohortCollator,
    MixedBatchSampler,
    check_every_class_labeled,
    labeled_rows,
    tokenize,
    training_dataset,
    unlabeled_rows,
)
from .export import export_family, export_student
from .files import atomic_directory, folder_parameters, write_json
from .hub.card import CardData, CardDataCallback, learning_curves, package_versions, write_model_card
from .hub.push import PushResult, check_repo_id, push_student
from .inference import predict_logits
from .losses import (
    IGNORE_INDEX,
    class_sums,
    cohort_loss,
    confidence_need_weights,
    distillation_loss,
    linear_rampup,
    supervised_loss,
)
from .metrics import agreement_choice, classification_metrics, cohort_metrics, ensemble_log_probs
from .mutual_distillation_config import MutualDistillationConfig, check_student_selection
from .resources import resolve_model_path
from .llm_teacher import DEFAULT_PROMPT, LLMTeacher
from .setfit_teacher import SetFitTeacher, train_in_every_process
from .fit_watch import LabelFitWatch
from .speed import classifier_predictor, cpu, measure_speed
from .teacher import add_teacher_embeddings, add_teacher_logits, check_teacher, teacher_predictor, train_teacher
from .teacher_calibration import check_cross_fitting, fitted_teacher_temperature, fold_teachers
from .teacher_ensemble import TeacherEnsemble, teacher_label_names, teacher_name
from .views import StudentViews, adversarial_step, make_student_views, parse_views
from .weighting import AdaptiveThresholds

logger = logging.getLogger(__name__)


class MutualDistillationTrainer(Trainer):
    """Trains a [`StudentCohort`]: K students on one frozen base, all in one forward per step, and owns the pipeline
    around it: raw labeled and unlabeled rows in, the teacher's logits computed and cached inside, the chosen student
    out as a plain transformers model with its card.

    For student k, with labeled rows (x_l, y) and unlabeled rows x_u in the same batch:

        L^k = CE(z_k(x_l), y) + λ_kd · KD(t(x_u) ‖ z_k(x_u)) + λ_mut · r(t) · 1/(K−1) Σ_{j≠k} D(z_k, stopgrad z_j)

    and the step minimises Σ_k L^k ([`nanonet_hf.losses.cohort_loss`]). Teacher logits `t` are computed once from
    `teacher_model` and cached ([`nanonet_hf.teacher.add_teacher_logits`]). With `args.online_teacher`, the teacher
    trains along (cross-entropy on the labeled rows, optionally distillation from the students) and its live logits
    are `t`. Either is divided by the teacher temperature first (`args.teacher_temperature`; by default 0.25 for a
    SetFit teacher, 1 for any other; "fit" fits it on the teacher's cross-fitted predictions of the labeled rows,
    [`nanonet_hf.teacher_calibration`]). With `args.student_views`, student k sees its own
    view of the batch ([`nanonet_hf.views`]) in training.

    Example:

        trainer = MutualDistillationTrainer(
            model="sentence-transformers/all-MiniLM-L6-v2", args=MutualDistillationConfig("out"),
            train_dataset=labeled, unlabeled_dataset=pool, eval_dataset=test,
        )
        trainer.train()
        trainer.save_model()  # out/student: AutoModelForSequenceClassification.from_pretrained loads it

    Args:
        model ([`StudentCohort`] or `str`):
            A base model id/folder, from which the cohort is built with the cohort settings of `args` (the single
            source of K, layers and adapters), or a cohort built by hand, which must agree with `args`.
        teacher_model (`str`, [`SetFitTeacher`], [`LLMTeacher`], [`TeacherEnsemble`] or [`~transformers.PreTrainedModel`], *optional*):
            A sequence classifier id/folder with the data's labels, a sentence-transformers body that SetFit trains
            on the labels, a causal LM that labels the texts (`teacher_type="llm"`), or an in-memory teacher
            (`args.teacher_type`, "auto" by default, tells which a folder is). `None`: one is made here from the
            labeled rows (SetFit on the base, in memory; `teacher_type="fine_tune"`: a full fine-tune of the base into
            `output_dir/teacher`; `"llm"`: `args.llm_teacher`; `"setfit+llm"`: their ensemble). With
            `args.online_teacher`, the classifier trained along.
        args ([`MutualDistillationConfig`], *optional*):
            Training configuration; defaults to one with `output_dir="nanonet_output"`.
        train_dataset (`datasets.Dataset`):
            Labeled rows: a text and a label column (`args.text_column`, `args.label_column`; labels as ids, names or
            a `ClassLabel`). Ready-made rows (tokenized `input_ids`, `labels` with -100 on unlabeled rows, labeled rows
            first, optional `teacher_logits`; [`nanonet_hf.data.training_dataset`]) are taken as they are.
        unlabeled_dataset (`datasets.Dataset`, *optional*):
            Raw unlabeled texts (`args.text_column`), distilled from the teacher.
        eval_dataset (`datasets.Dataset` or `dict[str, datasets.Dataset]`, *optional*):
            Labeled rows, raw or tokenized; evaluation reports each student, the ensemble and the best student.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The students' tokenizer; loaded from the base when not given.
        data_collator, compute_metrics, callbacks, optimizers:
            As in [`~transformers.Trainer`]; defaults are [`CohortCollator`] and [`cohort_metrics`].
    """

    _tag_names = ["nanonet", "mutual-distillation", "peft"]
    _name = "Mutual Distillation"
    # compute_loss returns a per-batch mean, not a sum normalised by num_items_in_batch: Trainer must divide it by
    # the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: StudentCohort | str,
        teacher_model: "str | PreTrainedModel | SetFitTeacher | LLMTeacher | TeacherEnsemble | None" = None,
        args: MutualDistillationConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        unlabeled_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
    ):
        started = time.perf_counter()
        # ---- args ----
        if args is None:
            args = MutualDistillationConfig(output_dir="nanonet_output")
        if not isinstance(args, MutualDistillationConfig):
            raise TypeError(f"args must be a MutualDistillationConfig, got {type(args).__name__}")
        if args.train_sampling_strategy not in ("random", "group_by_length"):
            raise ValueError(
                f"train_sampling_strategy={args.train_sampling_strategy!r} is not supported: every batch mixes "
                "labeled and unlabeled rows in a seeded order (MixedBatchSampler). Use 'random' or 'group_by_length'."
            )

        self.card_data = CardData()  # gathered during the run (CardDataCallback), rendered by save_model
        # ---- data: every input is checked before any work ----
        raw = train_dataset is not None and "input_ids" not in train_dataset.column_names
        self.labeled = self.unlabeled = None  # the raw rows, for selection and the card
        if raw:
            self.labeled = labeled_rows(train_dataset, args.text_column, args.label_column)
            check_every_class_labeled(self.labeled, "train_dataset")
            self.unlabeled = unlabeled_rows(unlabeled_dataset, args.text_column, args.label_column)
            label_names = self.labeled.features["label"].names
            # the card's dataset (DatasetInfo.dataset_name, set by prepare_data) and label budget, when they show
            self.card_data.dataset = train_dataset.info.dataset_name
            counts = set(np.bincount(np.asarray(self.labeled["label"]), minlength=len(label_names)).tolist())
            self.card_data.labels_per_class = counts.pop() if len(counts) == 1 else None
            eval_dataset = _map_eval(eval_dataset, lambda rows, key: labeled_rows(
                rows, args.text_column, args.label_column, label_names=label_names, source=key
            ))  # fmt: skip
        elif unlabeled_dataset is not None:
            raise ValueError(
                "unlabeled_dataset goes with raw labeled rows; a tokenized train_dataset already holds its unlabeled "
                "rows (labels -100, after the labeled ones: nanonet_hf.data.training_dataset)."
            )
        id2label = dict(enumerate(label_names)) if raw else None

        # ---- model: one source of truth for K, layers and adapters ----
        self.base_model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
        if isinstance(model, (str, os.PathLike)):
            base_path = resolve_model_path(str(model))
            check_base(base_path, args)  # an unsupported architecture or a bad cut fails before any weight is read
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(base_path)
            teacher_model = self._check_teacher(teacher_model, args, label_names if raw else None, processing_class)
            model = StudentCohort.from_pretrained(
                base_path, id2label=id2label or _id2label_from(train_dataset, eval_dataset), **args.cohort_kwargs()
            )
        elif isinstance(model, StudentCohort):
            check_cohort_matches(model, args)
            self.base_model_name = model.base_model_name_or_path
            if processing_class is None and raw:
                processing_class = AutoTokenizer.from_pretrained(model.base_model_name_or_path)
            teacher_model = self._check_teacher(teacher_model, args, label_names if raw else None, processing_class)
        else:
            raise TypeError(f"model must be a StudentCohort or a model path, got {type(model).__name__}")
        if raw and model.label_names != list(label_names):
            raise ValueError(
                f"The cohort predicts {model.label_names}, but "
                f"train_dataset's labels are {list(label_names)}; build it with id2label from the data."
            )

        # ---- views ----
        self.student_views = parse_views(args.student_views, model.num_students)
        model.check_views(self.student_views)  # e.g. shuffle on a model with relative positions: refused before training

        # ---- teacher: trained if none was given, its logits computed once and cached ----
        self.card_data.base_model = self.base_model_name
        self.teacher = None  # what teacher logits are computed with (a classifier folder or an in-memory teacher)
        self.teacher_calibration = None  # with teacher_temperature="fit": the fitted temperature and its evidence
        self.temperature_setting = args.teacher_temperature  # the teacher's default when None (`_temperature_setting`)
        if raw:
            t0 = time.perf_counter()
            teacher_model = self._make_teacher(teacher_model, model, args)
            self.temperature_setting = self._temperature_setting(args)
            rows = training_dataset(self.labeled, self.unlabeled)
            if self.teacher is not None and not args.online_teacher:  # an online teacher's logits are live
                if args.world_size > 1:  # SetFit trains under DDP: every process joins (see train_in_every_process)
                    train_in_every_process(self._teachers_to_train(args))
                if args.lambda_embedding > 0 and isinstance(self.teacher, SetFitTeacher):
                    self.teacher.remember_embeddings = True  # the body encodes each text once for both columns
                with args.main_process_first(desc="teacher logits"):  # computed once, read by the other processes
                    rows = add_teacher_logits(rows, self.teacher, label_names=label_names, max_length=args.max_length)
                    if args.lambda_embedding > 0:
                        rows = add_teacher_embeddings(rows, self.teacher, label_names=label_names, max_length=args.max_length)
                if self.temperature_setting == "fit":  # on the teacher's held-out predictions of the labeled rows
                    with args.main_process_first(desc="teacher temperature"):
                        self.teacher_calibration = fitted_teacher_temperature(
                            self.teacher, self.labeled, seed=args.seed, max_length=args.max_length
                        )
            self.card_data.wall_time_s["teacher_s"] = time.perf_counter() - t0
            train_dataset = tokenize(rows, processing_class, args.max_length)
            eval_dataset = _map_eval(eval_dataset, lambda rows, key: tokenize(
                rows.rename_column("label", "labels"), processing_class, args.max_length
            ))  # fmt: skip
        if args.online_teacher:
            if teacher_model is None:
                raise ValueError("online_teacher=True needs a teacher_model (a classifier with the cohort's labels).")
            if isinstance(teacher_model, (str, os.PathLike)):
                teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher_model, use_safetensors=True)
            model.attach_teacher(teacher_model)
        elif teacher_model is not None and not raw:
            raise ValueError("With a tokenized train_dataset, the offline teacher's logits go in its `teacher_logits` "
                             "column (nanonet_hf.add_teacher_logits); teacher_model is the online teacher only.")
        if not raw and args.lambda_embedding > 0 and "teacher_embeddings" not in train_dataset.column_names:
            raise ValueError("lambda_embedding > 0 with a tokenized train_dataset needs its `teacher_embeddings` column "
                             "(nanonet_hf.add_teacher_embeddings), which it lacks.")

        # ---- data ----
        if data_collator is None:
            if processing_class is None:
                raise ValueError("Pass processing_class (the tokenizer) or a data_collator.")
            data_collator = CohortCollator(processing_class)

        # ---- metrics ----
        # already passed through accelerator.gather; averaged and cleared in `log`
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

        # ---- callbacks: the LLKD thresholds (stateful: checkpoints save them), the card's data ----
        self.fit_watch = LabelFitWatch(model.config.num_labels)  # a collapsed cohort is said so while it trains
        callbacks = [*(callbacks or []), CardDataCallback(self.card_data), self.fit_watch]
        if args.kd_weighting == "confidence_need":
            callbacks.append(AdaptiveThresholds(model.config.num_labels, momentum=args.threshold_momentum))

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics if compute_metrics is not None else cohort_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        # SetFit's logistic head is under-confident: its logits are sharpened unless told otherwise (an ensemble
        # tempers each member itself), or fitted on the labeled rows ("fit")
        self.teacher_temperature = self.temperature_setting
        if self.teacher_temperature == "fit":
            self.teacher_temperature = self.teacher_calibration["temperature"] if self.teacher_calibration else 1.0
        elif self.teacher_temperature is None:
            self.teacher_temperature = getattr(self.teacher, "default_temperature", 1.0)
        self.chosen_student: int | None = None
        self.saved_results: dict | None = None  # what the last save_model wrote to results.json
        self._saved_to, self._started = None, started

    # ---- teacher ----

    def _check_teacher(self, teacher_model, args: MutualDistillationConfig, label_names: list[str] | None, tokenizer):
        """Resolve a teacher id to its folder, decide what kind of teacher it is (`self.teacher_type`) and check it
        before any work: a classifier's labels and tokenizer, an in-memory teacher's labels, an LLM teacher's
        tokenizer, prompt and verbalizers (built here: it loads nothing more until logits are asked for)."""
        self._llm_teacher = None
        explicit_llm = args.teacher_type == "llm" or isinstance(teacher_model, LLMTeacher)
        if isinstance(teacher_model, (str, os.PathLike)) and not explicit_llm:
            teacher_model = resolve_model_path(str(teacher_model))
        self.teacher_type = teacher_type(teacher_model, args)
        kinds = self.teacher_type.split("+")
        weights = args.ensemble_weights()
        if len(kinds) > 1 and isinstance(weights, list) and len(weights) != len(kinds):
            raise ValueError(f"teacher_ensemble_weights {weights} give {len(weights)} weights for the {len(kinds)} "
                             f"teachers of teacher_type={self.teacher_type!r}.")  # fmt: skip
        if len(kinds) > 1 and teacher_model is not None:
            raise ValueError(
                f"teacher_type={self.teacher_type!r} builds every member itself (SetFit and the fine-tune on the base, "
                "the LLM from llm_teacher); pass no teacher_model, or a TeacherEnsemble of your own teachers."
            )
        if label_names is not None and not isinstance(teacher_model, (str, os.PathLike, PreTrainedModel, type(None))):
            if teacher_label_names(teacher_model) != list(label_names):  # an in-memory SetFit, LLM or ensemble teacher
                raise ValueError(f"The teacher {teacher_name(teacher_model)} predicts labels "
                                 f"{teacher_label_names(teacher_model)}, but the data's labels are {list(label_names)}.")  # fmt: skip
        # a classifier folder: its labels and tokenizer (a SetFit body has no label space yet)
        if isinstance(teacher_model, (str, os.PathLike)) and label_names is not None and self.teacher_type == "fine_tune":
            teacher_tokenizer = check_teacher(teacher_model, label_names)
            if args.online_teacher and tokenizer is not None and teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise ValueError(
                    f"online_teacher: the teacher {teacher_model} tokenizes differently from the students' base; an "
                    "online teacher reads the students' token ids. Drop online_teacher to distil from its cached "
                    "logits instead."
                )
        if args.online_teacher and self.teacher_type != "fine_tune":
            raise ValueError(f"online_teacher trains a transformers classifier along; teacher_type={self.teacher_type!r} cannot be.")
        if args.lambda_embedding > 0 and (self.teacher_type not in ("setfit", "fine_tune") or args.online_teacher):
            raise ValueError(
                f"lambda_embedding={args.lambda_embedding} distils the teacher's sentence embeddings, which "
                f"{'an online' if args.online_teacher else 'a ' + repr(self.teacher_type)} teacher does not cache; "
                "use teacher_type 'setfit' or 'fine_tune' (offline), or lambda_embedding=0."
            )
        if "setfit" in kinds and teacher_model is None and args.setfit_body and label_names is not None and (
            args.lambda_kd > 0 or args.lambda_embedding > 0
        ):
            resolve_model_path(args.setfit_body)  # the SetFit teacher's body: a missing package is named here
        if args.teacher_temperature == "fit":
            if label_names is None or self.teacher_type not in ("setfit", "llm") or args.online_teacher:
                raise ValueError(
                    "teacher_temperature='fit' fits the temperature on the teacher's cross-fitted predictions of raw "
                    f"labeled rows, retraining it on folds of them: a SetFit or LLM teacher, not "
                    f"{'tokenized rows' if label_names is None else repr(self.teacher_type)}"
                    f"{' (online)' if args.online_teacher else ''}. Give teacher_temperature as a number."
                )
            check_cross_fitting(self.labeled)
        if "llm" in kinds and label_names is not None and not isinstance(teacher_model, LLMTeacher):
            self._llm_teacher = LLMTeacher(
                str(teacher_model or args.llm_teacher), self.labeled, verbalizers=args.verbalizers,
                prompt=args.llm_prompt or DEFAULT_PROMPT, examples_per_class=args.llm_examples_per_class,
                calibration=args.llm_calibration, use_chat_template=args.llm_chat_template, seed=args.seed,
            )  # fmt: skip
        return teacher_model

    def _make_teacher(self, teacher_model, cohort: StudentCohort, args: MutualDistillationConfig):
        """Set `self.teacher` (what the cached logits come from) and the card's teacher name; train a teacher on the
        labeled rows when none was given. Returns the online teacher (a folder or model) or `None`."""
        if teacher_model is None and args.lambda_kd == 0 and args.lambda_embedding == 0 and not args.online_teacher:
            return None  # no distillation: no teacher is made (a supervised-only run)
        if isinstance(teacher_model, PreTrainedModel):
            if not args.online_teacher:
                raise ValueError("An in-memory teacher_model is trained along (online_teacher=True); for cached "
                                 "logits, save it (save_pretrained) and pass its folder.")
            return teacher_model
        if teacher_model is not None and not isinstance(teacher_model, (str, os.PathLike)):
            self.teacher = teacher_model  # SetFitTeacher, LLMTeacher or TeacherEnsemble, as given
            self.card_data.teacher_name = teacher_name(teacher_model)
            return None
        members, names = [], []
        for kind in self.teacher_type.split("+"):
            member, name = self._make_member(kind, teacher_model, cohort, args)
            members.append(member)
            names.append(name)
        if len(members) == 1:
            self.teacher = members[0]
        else:
            self.teacher = TeacherEnsemble(members, weights=args.ensemble_weights(), labeled=self.labeled, seed=args.seed)
        self.card_data.teacher_name = " + ".join(names)
        return self.teacher if args.online_teacher else None

    def _make_member(self, kind: str, teacher_model, cohort: StudentCohort, args: MutualDistillationConfig):
        """One teacher of `kind` ("setfit", "llm", "fine_tune") and its name for the card."""
        base = cohort.base_model_name_or_path
        described = self.base_model_name or base
        if kind == "llm":
            return self._llm_teacher, teacher_name(self._llm_teacher)
        if kind == "setfit":
            # in memory, trained on first use: not at all when its logits are cached
            named = teacher_model or args.setfit_body
            body = resolve_model_path(named) if teacher_model is None and named else (named or base)
            teacher = SetFitTeacher(body, self.labeled, num_iterations=args.setfit_iterations,
                                    max_length=args.max_length, seed=args.seed)  # fmt: skip
            return teacher, f"SetFit ({args.setfit_iterations} pair iterations) on {named or described}"
        if teacher_model is not None:
            return teacher_model, str(teacher_model)
        folder = train_teacher(
            base, self.labeled, os.path.join(args.output_dir, "teacher"), num_train_epochs=args.teacher_num_train_epochs,
            learning_rate=args.teacher_learning_rate, max_length=args.max_length, seed=args.seed,
        )  # fmt: skip
        return folder, "fine-tuned full-depth base (this run)"

    def _teachers_to_train(self, args: MutualDistillationConfig) -> list:
        """Every teacher the run may train, in a fixed order: the teacher (or an ensemble's members), and the fold
        teachers that cross-fitting remakes from the labeled rows (an ensemble's fitted weights, a fitted temperature)."""
        ensemble = self.teacher if isinstance(self.teacher, TeacherEnsemble) else None
        found = list(ensemble.teachers) if ensemble else [self.teacher]
        if ensemble and ensemble.weights_setting == "fit":
            for member in ensemble.teachers:
                found += [t for _, t in fold_teachers(member, ensemble.labeled, folds=ensemble.folds, seed=ensemble.seed)]
        if self.temperature_setting == "fit":
            found += [t for _, t in fold_teachers(self.teacher, self.labeled, seed=args.seed)]
        return found

    def _temperature_setting(self, args: MutualDistillationConfig) -> float | str | None:
        """`args.teacher_temperature`, or when it is unset and the teacher is SetFit alone (offline), "fit": a
        SetFit head's confidence depends on its body (under-confident on MiniLM, nearly calibrated on MPNet, where a
        fixed sharpening made near one-hot targets that collapsed a student), so its temperature is fitted on the
        labeled rows, unless a class has fewer labeled rows than the folds need; then its fixed default stays."""
        if args.teacher_temperature is not None or not isinstance(self.teacher, SetFitTeacher) or args.online_teacher:
            return args.teacher_temperature
        try:
            check_cross_fitting(self.labeled)
        except ValueError as error:
            logger.warning("The SetFit teacher's temperature stays %s instead of being fitted: %s",
                           self.teacher.default_temperature, error)  # fmt: skip
            return None
        return "fit"

    def teacher_logits(self, rows: Dataset) -> np.ndarray:
        """The teacher's logits `[N, C]` for `rows` (a `text` column): the live online teacher, or the cached
        offline teacher's (computed once under `main_process_first`)."""
        cohort = self.accelerator.unwrap_model(self.model)
        if cohort.teacher is not None:
            return predict_logits(cohort.teacher, self.processing_class, list(rows["text"]), max_length=self.args.max_length)
        if self.teacher is None:
            raise ValueError("This trainer has no teacher: it was given tokenized rows with their teacher logits.")
        with self.args.main_process_first(desc="teacher logits"):
            done = add_teacher_logits(rows.select_columns(["text"]), self.teacher, label_names=cohort.label_names,
                                      max_length=self.args.max_length)  # fmt: skip
        return np.asarray(done["teacher_logits"], dtype=np.float32)

    def _teacher_members(self, eval_dataset: Dataset) -> dict:
        """An ensemble's members' metrics on `eval_dataset` (each from its own cached logits), and an LLM teacher's
        (or LLM member's) accuracy on the labeled rows before and after calibration."""
        members = self.teacher.teachers if isinstance(self.teacher, TeacherEnsemble) else [self.teacher]
        found = {}
        llm = next((member for member in members if isinstance(member, LLMTeacher)), None)
        if llm is not None:
            llm.bias  # noqa: B018 (fitted on the labeled rows on first use, which fills the report)
            found["llm_calibration"] = llm.report
        if isinstance(self.teacher, TeacherEnsemble):
            labels, names = np.asarray(eval_dataset["labels"]), self.accelerator.unwrap_model(self.model).label_names
            found["metrics"] = {}
            with self.args.main_process_first(desc="teacher logits"):
                for name, member in zip(self.teacher.names, members):
                    done = add_teacher_logits(eval_dataset.select_columns(["text"]), member, label_names=names,
                                              max_length=self.args.max_length)  # fmt: skip
                    found["metrics"][name] = classification_metrics(np.asarray(done["teacher_logits"]).argmax(-1), labels, len(names))
            found["weights"] = dict(zip(self.teacher.names, map(float, self.teacher.weights)))
        return found

    # ---- data ----

    def _set_signature_columns_if_needed(self):
        # The cohort's forward takes the model inputs only; the loss also needs `labels` and the teacher's columns.
        # Trainer would drop those columns, so keep them explicitly.
        if self._signature_columns is None:
            self._signature_columns = [*MODEL_INPUT_NAMES, "labels", "teacher_logits", "teacher_embeddings"]

    def _length_column(self, train_dataset: Dataset) -> str:
        """The column that gives group_by_length its token counts: `length_column_name` if there is one, else the
        tokenized `input_ids` (which every training dataset has: raw rows are tokenized in `__init__`)."""
        return self.args.length_column_name if self.args.length_column_name in train_dataset.column_names else "input_ids"

    def _get_train_sampler(self, train_dataset: Dataset | None = None):
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        labels = train_dataset["labels"]
        num_labeled = sum(label != IGNORE_INDEX for label in labels)
        if any(label != IGNORE_INDEX for label in labels[num_labeled:]):
            raise ValueError("The training dataset must hold its labeled rows first; build it with `training_dataset`.")
        lengths = None
        if self.args.train_sampling_strategy == "group_by_length":  # batches of similar lengths: less padding
            column = self._length_column(train_dataset)
            lengths = train_dataset[column] if column != "input_ids" else [len(ids) for ids in train_dataset[column]]
        return MixedBatchSampler(
            num_labeled,
            len(labels) - num_labeled,
            batch_size=self.args.per_device_train_batch_size,
            unlabeled_ratio=self.args.unlabeled_ratio,
            seed=self.args.seed,
            lengths=lengths,
        )

    # ---- loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        args = self.args
        labels = inputs["labels"]  # [B]
        teacher_logits = inputs.get("teacher_logits")  # [B, C] or None
        model_inputs = {key: inputs[key] for key in MODEL_INPUT_NAMES if key in inputs}
        cohort = self.accelerator.unwrap_model(model)
        teacher_loss = None
        # Trainer's --bf16/--fp16 autocast (accelerate's) wraps the prepared model's forward only; the online teacher
        # and the adversarial view call the unwrapped cohort, so they enter it here
        if cohort.teacher is not None:  # online teacher: learns from the labels now, its live logits are the target
            with self.accelerator.autocast():
                live = cohort.teacher(**model_inputs).logits.float()  # [B, C]
            teacher_loss = supervised_loss(live[:, None], labels)[0]
            teacher_logits = live.detach()
        if teacher_logits is not None and self.teacher_temperature != 1.0:  # sharpen (< 1) or soften the teacher
            teacher_logits = teacher_logits.float() / self.teacher_temperature
        unlabeled = labels == IGNORE_INDEX  # distillation, from the teacher or the students, on these rows only
        with self.accelerator.autocast():
            views = self._views(cohort, model_inputs, labels, unlabeled, teacher_logits) if model.training else None
        teacher_embeddings = inputs.get("teacher_embeddings") if args.lambda_embedding > 0 else None  # [B, D]
        if teacher_embeddings is not None:  # embedding distillation: the students' sentence embeddings too
            logits, embeddings = model(**model_inputs, views=views, return_embeddings=True)  # [B, K, C], [B, K, H]
        else:
            logits, embeddings = model(**model_inputs, views=views), None
        if teacher_loss is not None and args.lambda_teacher_mutual > 0:
            from_students = distillation_loss(live[:, None], logits.detach().mean(dim=1), temperature=args.temperature, weights=unlabeled)[0]
            teacher_loss = teacher_loss + args.lambda_teacher_mutual * from_students

        kd_weights = None
        if teacher_logits is not None and args.lambda_kd > 0 and args.kd_weighting == "confidence_need":
            kd_weights = self._confidence_need(logits, teacher_logits, unlabeled)
        ramp = linear_rampup(self.state.global_step, self.state.max_steps, ratio=args.rampup_ratio) if model.training else 1.0
        terms = cohort_loss(
            logits, labels, teacher_logits, temperature=args.temperature, lambda_kd=args.lambda_kd,
            lambda_mut=args.lambda_mut * self._mutual_weights(logits), mutual_weight=ramp, mutual_kind=args.mutual_loss, kd_weights=kd_weights,
            embeddings=embeddings, teacher_embeddings=teacher_embeddings,
            lambda_embedding=args.lambda_embedding if embeddings is not None else 0.0,
        )  # fmt: skip
        sup, kd, mut, emb = terms.supervised, terms.distillation, terms.mutual, terms.embedding
        per_student, loss = terms.per_student, terms.total
        mode = "train" if model.training else "eval"
        if teacher_loss is not None:
            loss = loss + teacher_loss
            self._metrics[mode]["loss_teacher"].append(self.accelerator.gather(teacher_loss.detach()[None]).mean().item())

        terms = torch.stack([sup, kd, mut, emb, per_student]).detach()  # [5, K]
        # one row per process: `gather`, not `gather_for_metrics`, whose end-of-data trimming counts samples
        gathered = self.accelerator.gather(terms[None])  # [processes, 5, K]
        if mode == "train":
            _raise_if_not_finite(gathered, step=self.state.global_step + 1)  # every process sees it and stops
        terms = gathered.mean(dim=0)  # [5, K] averaged over processes
        metrics = self._metrics[mode]
        for name, row in zip(("sup", "kd", "mut", "emb"), terms[:4]):
            if name != "emb" or args.lambda_embedding > 0:
                metrics[f"loss_{name}"].append(row.mean().item())
        for k, value in enumerate(terms[4].tolist()):
            metrics[f"student_{k}_loss"].append(value)
        if mode == "train":
            metrics["mutual_weight"].append(args.lambda_mut * ramp)
        return (loss, logits) if return_outputs else loss

    def _mutual_weights(self, logits: torch.Tensor) -> torch.Tensor | float:
        """`args.mutual_weights` as a `[K]` tensor beside `logits` (each student's share of λ_mut), or 1."""
        weights = self.args.mutual_weights
        return 1.0 if weights is None else torch.tensor(weights, dtype=torch.float32, device=logits.device)

    def _views(
        self,
        cohort: StudentCohort,
        model_inputs: dict,
        labels: torch.Tensor,
        unlabeled: torch.Tensor,
        teacher_logits: torch.Tensor | None,
    ) -> StudentViews | None:
        """Each student's view of this training batch, or `None` when every student sees it as is.

        The adversarial view's step is the normalised gradient, w.r.t. a small random perturbation of its students'
        input hidden states, of those students' own supervised + distillation loss: one extra forward of the cohort
        (unwrapped: no DDP gradient sync) and a backward to the perturbation only (no parameter gets a gradient)."""
        if all(view == "dropout" for view in self.student_views):
            return None
        views = make_student_views(self.student_views, model_inputs["attention_mask"], cutoff_rate=self.args.cutoff_rate)
        if "adversarial" not in self.student_views:
            return views
        batch, length = model_inputs["input_ids"].shape
        chosen = torch.tensor([view == "adversarial" for view in self.student_views], device=labels.device)
        shape = (cohort.num_students, batch, length, cohort.config.hidden_size)
        noise = adversarial_step(torch.randn(shape, device=labels.device), 1e-3) * chosen[:, None, None, None]
        noise.requires_grad_(True)
        views.perturbation = noise
        try:
            logits = cohort(**model_inputs, views=views).float()
            loss = supervised_loss(logits, labels)
            if teacher_logits is not None:
                loss = loss + distillation_loss(logits, teacher_logits, temperature=self.args.temperature, weights=unlabeled)
            loss = loss[chosen].sum()
            gradient = torch.autograd.grad(loss, noise, allow_unused=True)[0] if loss.requires_grad else None
        finally:
            cohort.release_routing()
        views.perturbation = (
            adversarial_step(gradient.detach(), self.args.adversarial_epsilon) * chosen[:, None, None, None]
            if gradient is not None
            else None
        )
        return views

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the online teacher's weights in groups of their own at
        `args.online_teacher_learning_rate`."""
        optimizer = super().create_optimizer(model)
        teacher = self.accelerator.unwrap_model(self.model).teacher
        if teacher is not None:
            owned = {id(param) for param in teacher.parameters()}
            for group in list(optimizer.param_groups):
                moved = [param for param in group["params"] if id(param) in owned]
                if moved:
                    group["params"] = [param for param in group["params"] if id(param) not in owned]
                    settings = {key: value for key, value in group.items() if key != "params"}
                    optimizer.add_param_group({**settings, "params": moved, "lr": self.args.online_teacher_learning_rate})
            optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def _confidence_need(self, logits: torch.Tensor, teacher_logits: torch.Tensor, unlabeled: torch.Tensor) -> torch.Tensor:
        """LLKD weights `[B, K]` under the current thresholds; in training, log the rows kept per class and move the
        thresholds by the batch's per-class means, summed over processes so that every process keeps the same ones."""
        thresholds = next(cb for cb in self.callback_handler.callbacks if isinstance(cb, AdaptiveThresholds))
        teacher_t, student_t = thresholds.tensors(logits.device)
        weights, keep, confidence, need, teacher_class = confidence_need_weights(
            logits, teacher_logits, teacher_thresholds=teacher_t, student_thresholds=student_t, rows=unlabeled
        )
        if self.model.training:
            rows = unlabeled.nonzero().squeeze(-1)
            classes = teacher_class[rows]
            stats = torch.stack(
                [
                    class_sums(torch.ones_like(confidence[rows]), classes, thresholds.num_classes),  # rows
                    class_sums(confidence[rows], classes, thresholds.num_classes),
                    class_sums(need[rows].mean(-1), classes, thresholds.num_classes),  # mean over students
                    class_sums(keep[rows].float().mean(-1), classes, thresholds.num_classes),  # share of students
                ]
            )  # [4, C]
            counts, sums, kept = self.accelerator.gather(stats[None]).sum(dim=0).split([1, 2, 1])
            counts, kept = counts[0], kept[0]
            id2label = self.accelerator.unwrap_model(self.model).config.id2label
            for c in range(thresholds.num_classes):
                if counts[c] > 0:
                    self._metrics["train"][f"kd_kept_{id2label.get(c, c)}"].append((kept[c] / counts[c]).item())
            if counts.sum() > 0:
                self._metrics["train"]["kd_kept"].append((kept.sum() / counts.sum()).item())
            thresholds.update(sums, counts)
        return weights

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            # the cohort keeps its routing until backward (gradient checkpointing recomputes the forward there)
            self.accelerator.unwrap_model(model).release_routing()

    def prediction_step(self, model: nn.Module, inputs: dict, prediction_loss_only: bool, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, logits = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), logits.detach(), inputs.get("labels")  # logits [B, K, C]: one column per student

    # ---- logging ----

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        super().log({**logs, **metrics}, start_time)
        self._metrics[mode].clear()

    # ---- checkpoints: only what training changes ----

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # The frozen base is the same at every step; a checkpoint holds the students (LoRA weights and heads).
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).trainable_state_dict()
        super()._save(output_dir, state_dict=state_dict)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            # Trainer would take the newest `checkpoint-N` folder even if a kill cut it short; take the newest
            # complete one (Trainer writes trainer_state.json last).
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True, but {self.args.output_dir} holds no complete checkpoint.")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # Trainer's own loader would either reload non-active PEFT adapters as frozen or load non-strictly; this one
        # checks that the checkpoint holds exactly this cohort's students.
        cohort = self.accelerator.unwrap_model(model if model is not None else self.model)
        path = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"Can't find a cohort checkpoint at {resume_from_checkpoint}: {SAFE_WEIGHTS_NAME} is missing.")
        if not os.path.isfile(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)):
            raise ValueError(
                f"The checkpoint {resume_from_checkpoint} is incomplete ({TRAINER_STATE_NAME}, written last, is missing): "
                "the run was probably killed while saving it. Resume from the previous checkpoint, or pass "
                "resume_from_checkpoint=True to pick the newest complete one."
            )
        try:
            state_dict = safetensors.torch.load_file(path, device="cpu")
        except Exception as error:  # safetensors raises its own error types for truncated or corrupt files
            raise ValueError(f"The checkpoint {path} cannot be read (truncated or corrupt?): {error}") from error
        cohort.load_trainable_state_dict(state_dict, source=path)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # ---- the pipeline's end: choose, compare, save, publish ----

    def select_student(self, max_rows: int | None = None, rule: str | None = None) -> int:
        """The student to export, chosen without test labels on the first `max_rows` (`args.selection_rows`) unlabeled
        training rows, by `rule` (`args.student_selection`): `"teacher"`, the student whose predictions agree most
        with the teacher's; `"ensemble"`, the one that agrees most with the cohort's ensemble (the mean of the
        students' probabilities). With no unlabeled rows, the most accurate on the labeled rows. Sets and returns
        `chosen_student`."""
        rule = check_student_selection(rule or self.args.student_selection)
        cohort = self.accelerator.unwrap_model(self.model)
        rows = self.train_dataset
        if rows is None or "text" not in rows.column_names:
            raise ValueError("select_student reads the training rows' `text` column; this train_dataset has none.")
        labels = np.asarray(rows["labels"])
        num_labeled = _num_labeled(rows)
        has_unlabeled = num_labeled < len(rows)
        end = min(len(rows), num_labeled + (max_rows or self.args.selection_rows))
        chosen_rows = rows.select(range(num_labeled, end) if has_unlabeled else range(num_labeled))
        logits = predict_logits(cohort, self.processing_class, list(chosen_rows["text"]), max_length=self.args.max_length)
        if not has_unlabeled:
            reference = labels[:num_labeled]
            self.card_data.selection = "accuracy on the labeled rows"
        elif rule == "ensemble":
            reference = ensemble_log_probs(logits).argmax(-1)
            self.card_data.selection = "agreement with the students' ensemble on unlabeled rows"
        else:
            if cohort.teacher is None and "teacher_logits" in rows.column_names:
                reference = np.asarray(chosen_rows["teacher_logits"]).argmax(-1)
            else:
                reference = self.teacher_logits(chosen_rows).argmax(-1)
            self.card_data.selection = "agreement with the teacher on unlabeled rows"
        self.chosen_student = agreement_choice(logits, reference)
        return self.chosen_student

    def train_supervised_baseline(self) -> dict[str, float] | None:
        """Train one student on the labeled rows alone (no teacher, no peers, no views) with the layers of the chosen
        student ([`select_student`]) and this run's steps, batch size and learning rate, and return its accuracy and
        macro-F1 on the eval set: the comparison the card shows. `None` without an eval set."""
        if self.state.global_step == 0:
            raise RuntimeError("train_supervised_baseline() takes the cohort's step budget: call train() first.")
        cohort = self.accelerator.unwrap_model(self.model)
        t0 = time.perf_counter()
        chosen = self.chosen_student if self.chosen_student is not None else self.select_student()
        plan = cohort.plan
        own_adapted = [plan.positions[chosen].index(position) for position in plan.adapted[chosen]]
        settings = {
            **self.args.to_dict(),
            "output_dir": os.path.join(self.args.output_dir, "supervised_only"),
            "num_students": 1, "lambda_kd": 0.0, "lambda_mut": 0.0, "mutual_weights": None, "lambda_embedding": 0.0,
            "kd_weighting": "none",
            "student_layers": [",".join(map(str, plan.students[chosen]))],  # the chosen student's own layers
            "adapter_layers": ",".join(map(str, own_adapted)) if self.args.adapter_layers is not None else None,
            "student_views": None,
            "online_teacher": False, "max_steps": self.state.max_steps, "save_strategy": "no", "eval_strategy": "no",
            "push_to_hub": False, "hub_token": self.args.hub_token, "resume_from_checkpoint": None,
            "text_column": "text", "label_column": "label",
        }  # fmt: skip
        args = MutualDistillationConfig(**settings)
        if self.labeled is not None:  # raw rows: with lambda_kd 0 and no teacher_model, no teacher is made
            labeled = self.labeled
        else:
            labeled = self.train_dataset.select(range(_num_labeled(self.train_dataset)))
        baseline = MutualDistillationTrainer(
            model=cohort.base_model_name_or_path, args=args, train_dataset=labeled, processing_class=self.processing_class
        )
        baseline.train()
        eval_dataset = _first_eval(self.eval_dataset)
        result = None
        if eval_dataset is not None:
            metrics = baseline.evaluate(eval_dataset)
            result = {"accuracy": metrics["eval_student_0_accuracy"], "macro_f1": metrics["eval_student_0_macro_f1"],
                      "layers": cohort.depths[chosen]}  # fmt: skip
        self.card_data.supervised_only = result
        self.card_data.wall_time_s["supervised_train_s"] = time.perf_counter() - t0
        return result

    def results(self) -> dict:
        """What the run produced, as `results.json` holds it and the model card renders it: each student's, the
        ensemble's and the teacher's metrics on the eval set (evaluated now unless the last evaluation was at this
        step), the chosen student, the label budget, the cohort and the training settings."""
        cohort = self.accelerator.unwrap_model(self.model)
        args, data = self.args, self.card_data
        eval_dataset = _first_eval(self.eval_dataset)
        if eval_dataset is not None and data.eval_step != self.state.global_step:
            self.evaluate(eval_dataset, metric_key_prefix="test")
        chosen = self.chosen_student if self.chosen_student is not None else self.select_student()
        metrics, num_students = data.eval_metrics or {}, cohort.num_students
        rows = self.train_dataset
        labels = np.asarray(rows["labels"])
        num_labeled = _num_labeled(rows)
        label_names = cohort.label_names
        teacher = None
        if eval_dataset is not None and "text" in eval_dataset.column_names and (self.teacher or cohort.teacher):
            predictions = self.teacher_logits(eval_dataset).argmax(-1)
            teacher = classification_metrics(predictions, np.asarray(eval_dataset["labels"]), len(label_names))
        members = self._teacher_members(eval_dataset) if teacher is not None else {}
        texts = rows["text"] if "text" in rows.column_names else None
        examples = [texts[list(labels).index(c)] for c in sorted(set(labels[:num_labeled].tolist()))] if texts else []

        def scores(prefix: str) -> dict | None:
            if f"{prefix}_accuracy" not in metrics:
                return None
            return {"accuracy": metrics[f"{prefix}_accuracy"], "macro_f1": metrics[f"{prefix}_macro_f1"]}

        wall = {**data.wall_time_s, "total_s": time.perf_counter() - self._started}
        return {
            "dataset": data.dataset,
            "base_model": data.base_model,
            "teacher": teacher,
            "teacher_name_or_path": data.teacher_name,
            "teachers": members.get("metrics"),  # an ensemble's members, each alone
            "teacher_weights": members.get("weights"),
            "llm_calibration": members.get("llm_calibration"),  # an LLM teacher on the labeled rows, before/after
            "training_warning": self.fit_watch.message,  # e.g. a collapse the supervised loss showed (fit_watch.py)
            "students": [scores(f"student_{k}") for k in range(num_students)] if metrics else None,
            "ensemble": scores("ensemble"),
            "supervised_only": data.supervised_only,
            "chosen_student": chosen,
            "selection": data.selection,
            "label_budget": {
                "labels_per_class": data.labels_per_class,
                "labeled": num_labeled,
                "unlabeled": len(rows) - num_labeled,
                "generated": data.generated,
                "test": len(eval_dataset) if eval_dataset is not None else 0,
            },
            "cohort": {
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
                "steps": self.state.global_step,
            },
            "label_names": label_names,
            "examples": examples,  # one labeled text per class: examples for the model card and the Space demo
            "training": {
                "learning_rate": args.learning_rate,
                "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
                "unlabeled_ratio": args.unlabeled_ratio,
                "temperature": args.temperature,
                "teacher_temperature": self.teacher_temperature,
                "teacher_temperature_fit": self.teacher_calibration,  # "fit": what it was fitted from
                "lambda_kd": args.lambda_kd,
                "lambda_mut": args.lambda_mut,
                "mutual_weights": args.mutual_weights,
                "lambda_embedding": args.lambda_embedding,
                "mutual_loss": args.mutual_loss,
                "kd_weighting": args.kd_weighting,
                "student_views": args.student_views,
                "online_teacher": args.online_teacher,
                "max_length": args.max_length,
                "seed": args.seed,
            },
            "learning_curve": learning_curves(self.state.log_history, num_students),
            "hardware": _hardware(args),
            "versions": package_versions("nanonet-hf", "transformers", "peft", "torch", "accelerate", "datasets"),
            "wall_time_s": {key: round(value, 1) for key, value in wall.items()},
        }

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the chosen student ([`select_student`] when none was chosen) into `output_dir` (default
        `args.output_dir`): `student/`, a plain transformers model of its own depth with its tokenizer and model card
        (`AutoModelForSequenceClassification.from_pretrained` loads it without peft), `student_adapter/` (its PEFT
        adapter and head), `student_base/` (the cut frozen base the adapter applies to) and `results.json`. With
        several students, every one is also written as `students/student_{k}/`, a plain model with its own card. Each
        exported student (and the teacher) is timed on this machine's CPU; the family table of `results.json` and
        the cards gives its layers, parameters, accuracy and speed. With `args.push_to_hub`, the student is then
        pushed ([`push_to_hub`]).

        Trainer's own checkpoints (`_internal_call`) hold the students' trainable weights only (see `_save`)."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        if self.state.global_step == 0:
            raise RuntimeError("save_model() before train(): there is no trained student to save. Call train() first.")
        output_dir = output_dir or self.args.output_dir
        results = self.results()
        if self.is_world_process_zero():
            t0 = time.perf_counter()
            cohort = self.accelerator.unwrap_model(self.model)
            exported = export_student(cohort, results["chosen_student"], output_dir, self.processing_class)
            results["exported"] = {"student_dir": exported.student_dir, "adapter_dir": exported.adapter_dir}
            folders = [exported.student_dir]
            if cohort.num_students > 1:
                folders = export_family(cohort, output_dir, self.processing_class)
            results["family"] = self.family_table(results, folders, output_dir)
            if cohort.teacher is not None:  # what the students last learned from, as it ended up
                with atomic_directory(os.path.join(output_dir, "online_teacher")) as tmp:
                    cohort.teacher.save_pretrained(tmp)
                    self.processing_class.save_pretrained(tmp)
            wall = results["wall_time_s"]
            total = wall.pop("total_s")
            wall["export_s"] = round(time.perf_counter() - t0, 1)
            wall["total_s"] = round(total + wall["export_s"], 1)
            write_json(os.path.join(output_dir, "results.json"), results)
            if results["students"] is not None:
                write_model_card(output_dir, license=self.args.card_license)  # student/README.md (+ learning_curve.png)
                if cohort.num_students > 1:
                    for k, folder in enumerate(folders):
                        write_model_card(output_dir, target_dir=folder, license=self.args.card_license, student=k)
            else:
                logger.warning("No eval_dataset: %s/student has no model card (its results table needs one).", output_dir)
        self.accelerator.wait_for_everyone()
        self._saved_to, self.saved_results = output_dir, results
        if self.args.push_to_hub:
            self.push_to_hub()

    def family_table(self, results: dict, folders: list[str], output_dir: str) -> list[dict]:
        """One row per exported student (`folders`, in student order; one folder for a cohort of one): its layers,
        parameters, accuracy and macro-F1 on the eval set, and its speed on this machine's CPU (median ms per call at
        batch 1 and 32, texts per second), timed interleaved with the teacher (whose row comes last, `"teacher":
        True`). `args.speed_repeats=0` leaves the speed out."""
        cohort = self.accelerator.unwrap_model(self.model)
        students = [results["chosen_student"]] if len(folders) == 1 else list(range(cohort.num_students))
        rows, predictors = [], {}
        for k, folder in zip(students, folders):
            model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
            tokenizer = AutoTokenizer.from_pretrained(folder)
            scores = (results["students"] or [None] * cohort.num_students)[k] or {}
            rows.append({
                "name": f"student {k}", "student": k, "layers": cohort.depths[k],
                "layer_indices": cohort.student_layers[k], "parameters": model.num_parameters(),
                "accuracy": scores.get("accuracy"), "macro_f1": scores.get("macro_f1"),
                "dir": os.path.relpath(folder, output_dir),
            })  # fmt: skip
            predictors[rows[-1]["name"]] = classifier_predictor(model, tokenizer, max_length=self.args.max_length)
        if self.teacher is not None or cohort.teacher is not None:
            teacher = results.get("teacher") or {}
            rows.append({"name": "teacher", "teacher": True, **_teacher_size(cohort.teacher or self.teacher),
                         "accuracy": teacher.get("accuracy"), "macro_f1": teacher.get("macro_f1")})  # fmt: skip
            if cohort.teacher is not None:  # online: the classifier as it ended up
                predictors["teacher"] = classifier_predictor(cohort.teacher, self.processing_class, max_length=self.args.max_length)
            else:
                predictors["teacher"] = teacher_predictor(self.teacher, label_names=cohort.label_names, max_length=self.args.max_length)
        if self.args.speed_repeats > 0:
            texts = _speed_texts(self.eval_dataset, self.train_dataset)
            speeds = measure_speed(predictors, texts, repeats=self.args.speed_repeats)
            for row in rows:
                row.update(speeds[row["name"]])
                row["measured_on"] = cpu()
        return rows

    def push_to_hub(
        self,
        repo_id: str | None = None,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> PushResult | None:
        """Publish the saved student with its card to `repo_id` (default `args.hub_model_id`), saving it first if
        `save_model` was not called: [`nanonet_hf.hub.push_student`] (`kwargs` go to it, e.g. `adapter_repo_id`).
        Returns its [`PushResult`] on the main process."""
        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise ValueError("push_to_hub needs a repo_id (or args.hub_model_id), e.g. 'me/my-classifier'.")
        check_repo_id(repo_id)
        if getattr(self, "_saved_to", None) is None:
            pushing, self.args.push_to_hub = self.args.push_to_hub, False  # save without pushing from inside the save
            try:
                self.save_model()
            finally:
                self.args.push_to_hub = pushing
        result = None
        if self.is_world_process_zero():
            result = push_student(
                self._saved_to, repo_id,
                private=bool(self.args.hub_private_repo if private is None else private),
                revision=revision or self.args.hub_revision, commit_message=commit_message,
                token=token or self.args.hub_token, license=self.args.card_license, **kwargs,
            )  # fmt: skip
            logger.info("Pushed the student to %s: %s", repo_id, result.commit_url)
        self.accelerator.wait_for_everyone()
        return result

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # Trainer creates the repository up front to push cohort checkpoints into it; what is published here is the
        # exported student, whose push (push_student) creates the repository itself when the student exists.
        self.hub_model_id = self.args.hub_model_id

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # a cohort checkpoint only nanonet can read is not published (see init_hf_repo)
        return None


def teacher_type(teacher_model, args: MutualDistillationConfig) -> str:
    """"setfit", "fine_tune" (a transformers classifier, trained here when none is given), "llm", or kinds joined by
    "+" (an ensemble): `args.teacher_type`, or for "auto" what `teacher_model` is: a `...ForSequenceClassification`
    checkpoint, an in-memory model or an online teacher is a classifier, a `...ForCausalLM` an LLM; no teacher, a
    `SetFitTeacher` or any other body gets SetFit."""
    if isinstance(teacher_model, SetFitTeacher):
        return "setfit"
    if isinstance(teacher_model, LLMTeacher):
        return "llm"
    if isinstance(teacher_model, TeacherEnsemble):
        return "ensemble"
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


def _num_labeled(rows: Dataset) -> int:
    """How many labeled rows a training dataset holds (they come first; unlabeled rows have labels -100)."""
    return int((np.asarray(rows["labels"]) != IGNORE_INDEX).sum())


def _first_eval(eval_dataset: Dataset | dict | None) -> Dataset | None:
    """The eval set the card reports: the dataset, or the first of a dict of them."""
    if isinstance(eval_dataset, dict):
        return next(iter(eval_dataset.values()), None)
    return eval_dataset


def _map_eval(eval_dataset: Dataset | dict | None, function: Callable[[Dataset, str], Dataset]):
    """Apply `function(rows, name)` to the raw (untokenized) eval set(s); tokenized ones are kept as they are."""
    def one(rows: Dataset, name: str) -> Dataset:
        return rows if "input_ids" in rows.column_names else function(rows, name)

    if isinstance(eval_dataset, dict):
        return {key: one(rows, f"eval_dataset[{key!r}]") for key, rows in eval_dataset.items()}
    return one(eval_dataset, "eval_dataset") if eval_dataset is not None else None


def _teacher_size(teacher) -> dict:
    """The teacher's layers and weights for the family table, where they can be read without loading it: an in-memory
    classifier, or the folder of a classifier or of a SetFit body (its logistic head's few weights not counted)."""
    if isinstance(teacher, PreTrainedModel):
        return {"layers": teacher.config.num_hidden_layers, "parameters": teacher.num_parameters()}
    folder = teacher.body_name_or_path if isinstance(teacher, SetFitTeacher) else teacher
    if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(folder):
        return {"layers": None, "parameters": None}
    config = AutoConfig.from_pretrained(folder)
    return {"layers": getattr(config, "num_hidden_layers", None), "parameters": folder_parameters(folder)}


def _speed_texts(eval_dataset: Dataset | dict | None, train_dataset: Dataset) -> list[str]:
    """Real texts to time the models on: the eval set's, else the training rows'."""
    for rows in (_first_eval(eval_dataset), train_dataset):
        if rows is not None and "text" in rows.column_names and len(rows):
            return list(rows["text"])
    raise ValueError("No texts to time the exported students on (no `text` column); set speed_repeats=0.")


def _hardware(args: MutualDistillationConfig) -> str:
    processes = f"{args.world_size} process(es)"
    if torch.cuda.is_available() and not args.use_cpu:
        return f"{torch.cuda.get_device_name(0)}, {processes}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()}), {processes}"


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that holds its trainer state, or `None`."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name))
    )
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)) and os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
            return folder
        logger.warning("Skipping the incomplete checkpoint %s (killed while saving?).", folder)
    return None


LOSS_TERMS = ("supervised", "distillation", "mutual", "embedding")


def _raise_if_not_finite(terms: torch.Tensor, *, step: int) -> None:
    """`terms` `[processes, 5, K]` (supervised, distillation, mutual, embedding, total per student): stop at the first
    NaN/inf with the step, the student and the loss term, before the optimizer can write it into the weights."""
    bad = (~torch.isfinite(terms[:, :4])).nonzero()
    if len(bad):
        process, term, student = bad[0].tolist()
        value = terms[process, term, student].item()
        raise FloatingPointError(
            f"Non-finite loss at step {step}: the {LOSS_TERMS[term]} loss of student {student} is {value} "
            f"(process {process}; {len(bad)} non-finite term(s) in all). Check the teacher logits and the data, "
            "or lower the learning rate; no weights were updated with it."
        )


def _id2label_from(*datasets: Dataset | dict | None) -> dict[int, str]:
    for dataset in datasets:
        for candidate in dataset.values() if isinstance(dataset, dict) else [dataset]:
            for column in ("labels", "label"):
                feature = candidate.features.get(column) if candidate is not None else None
                if feature is not None and hasattr(feature, "names"):
                    return dict(enumerate(feature.names))
    raise ValueError(
        "Cannot tell the label names to build a cohort from a model path: give train_dataset or eval_dataset a "
        "`labels` ClassLabel column, or pass a StudentCohort built with `StudentCohort.from_pretrained(..., id2label=...)`."
    )
