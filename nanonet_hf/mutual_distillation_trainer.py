import copy
import logging
import os
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
from transformers.utils import SAFE_WEIGHTS_NAME

from .base_model import check_base, max_tokens
from .baseline import supervised_baseline
from .cohort import StudentCohort, check_cohort_matches
from .data import (
    MODEL_INPUT_NAMES,
    CohortCollator,
    MixedBatchSampler,
    check_every_class_labeled,
    drop_labeled_texts,
    id2label_from,
    labeled_rows,
    num_labeled,
    resolve_max_length,
    tokenize,
    training_dataset,
    unlabeled_rows,
    warn_about_overlap,
)
from .deploy.tiers import check_static_pool, export_tiers, static_training_rows
from .export import export_family, export_student
from .files import atomic_directory, check_no_previous_export, last_complete_checkpoint
from .fit_watch import LabelFitWatch
from .hub.card import CardData, CardDataCallback, write_model_card
from .hub.push import PushResult, check_repo_id, push_student
from .inference import predict_logits
from .losses import IGNORE_INDEX, cohort_loss, distillation_loss, linear_rampup, raise_if_not_finite, supervised_loss
from .metrics import agreement_choice, cohort_metrics, ensemble_log_probs
from .mutual_distillation_config import MutualDistillationConfig, check_student_selection
from .resources import check_model_path, resolve_model_path
from .results import RunResults, collect_results, family_table
from .teachers import Teacher, build_teacher, fitted_teacher_temperature, plan_teacher, train_in_every_process
from .teachers.calibration import score_teacher
from .teachers.factory import teachers_to_train, temperature_setting
from .views import parse_views, student_views
from .weighting import AdaptiveThresholds

logger = logging.getLogger(__name__)


class MutualDistillationTrainer(Trainer):
    """Trains a [`StudentCohort`]: K students on one frozen base, all in one forward per step, and owns the pipeline
    around it: raw labeled and unlabeled rows in, the teacher's logits computed and cached inside, the chosen student
    out as a plain transformers model with its card.

    For student k, with labeled rows (x_l, y) and unlabeled rows x_u in the same batch:

        L^k = CE(z_k(x_l), y) + λ_kd · KD(t(x_u) ‖ z_k(x_u)) + λ_mut · r(t) · 1/(K−1) Σ_{j≠k} D(z_k, stopgrad z_j)

    and the step minimises Σ_k L^k ([`nanonet_hf.losses.cohort_loss`]). Teacher logits `t` are computed once from
    `teacher_model` and cached ([`nanonet_hf.teachers.Teacher.add_logits`]). With `args.online_teacher`, the teacher
    trains along (cross-entropy on the labeled rows, optionally distillation from the students) and its live logits
    are `t`. Either is divided by the teacher temperature first (`args.teacher_temperature`; by default fitted for a
    SetFit teacher, 1 for any other; "fit" fits it on the teacher's cross-fitted predictions of the labeled rows,
    [`nanonet_hf.teachers.calibration`]). With `args.student_views`, student k sees its own
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
        teacher_model (`str`, [`Teacher`] or [`~transformers.PreTrainedModel`], *optional*):
            A sequence classifier id/folder with the data's labels, a sentence-transformers body that SetFit trains
            on the labels, a causal LM that labels the texts (`teacher_type="llm"`), or an in-memory teacher
            (`args.teacher_type`, "auto" by default, tells which a folder is). `None`: one is made here from the
            labeled rows (SetFit on `args.setfit_body`, in memory; `teacher_type="fine_tune"`: a full fine-tune of the base into
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
        teacher_model: "str | PreTrainedModel | Teacher | None" = None,
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

        check_no_previous_export(args.output_dir, overwrite=args.overwrite_output_dir,
                                 resuming=bool(args.resume_from_checkpoint))  # fmt: skip
        self.card_data = CardData()  # gathered during the run (CardDataCallback), rendered by save_model
        # ---- data: every input is checked before any work ----
        raw = train_dataset is not None and "input_ids" not in train_dataset.column_names
        self.labeled = self.unlabeled = None  # the raw rows, for selection and the card
        self.cut_share = None  # the share of labeled and unlabeled texts that max_length cuts
        if raw:
            self.labeled = labeled_rows(train_dataset, args.text_column, args.label_column, label_names=args.class_names)
            check_every_class_labeled(self.labeled, "train_dataset")
            self.unlabeled = drop_labeled_texts(self.labeled, unlabeled_rows(unlabeled_dataset, args.text_column, args.label_column))
            label_names = self.labeled.features["label"].names
            # the card's dataset (DatasetInfo.dataset_name, set by prepare_data) and label budget, when they show
            self.card_data.dataset = train_dataset.info.dataset_name
            counts = set(np.bincount(np.asarray(self.labeled["label"]), minlength=len(label_names)).tolist())
            self.card_data.labels_per_class = counts.pop() if len(counts) == 1 else None
            eval_dataset = _map_eval(eval_dataset, lambda rows, key: labeled_rows(
                rows, args.text_column, args.label_column, label_names=label_names, source=key
            ))  # fmt: skip
            for name, rows in _named(eval_dataset):
                warn_about_overlap(self.labeled, self.unlabeled, rows, source=name)
        elif unlabeled_dataset is not None:
            raise ValueError(
                "unlabeled_dataset goes with raw labeled rows; a tokenized train_dataset already holds its unlabeled "
                "rows (labels -100, after the labeled ones: nanonet_hf.data.training_dataset)."
            )
        if train_dataset is not None:  # a static student learns from the teacher's labels of the pool
            check_static_pool(args.export_formats, len(self.unlabeled) if raw else len(train_dataset) - num_labeled(train_dataset))
        id2label = dict(enumerate(label_names)) if raw else None

        # ---- model: one source of truth for K, layers and adapters ----
        self.base_model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
        if isinstance(model, (str, os.PathLike)):
            base_path = resolve_model_path(str(model))
            check_model_path(base_path, "model (--model_name_or_path)")
            check_base(base_path, args)  # an unsupported architecture or a bad cut fails before any weight is read
            base_config = AutoConfig.from_pretrained(base_path)
            tokenizer_from = base_path
        elif isinstance(model, StudentCohort):
            check_cohort_matches(model, args)
            self.base_model_name, base_config = model.base_model_name_or_path, model.config
            tokenizer_from = model.base_model_name_or_path
        else:
            raise TypeError(f"model must be a StudentCohort or a model path, got {type(model).__name__}")
        if processing_class is None and (raw or not isinstance(model, StudentCohort)):
            processing_class = AutoTokenizer.from_pretrained(tokenizer_from)
        elif processing_class is not None:
            processing_class = copy.deepcopy(processing_class)  # its model_max_length is set below, not the caller's
        if processing_class is not None:  # every text is cut to the run's length, and the exports say so
            if raw:
                args.max_length, self.cut_share = resolve_max_length(
                    args.max_length, processing_class, max_tokens(base_config, processing_class), self.labeled,
                    self.unlabeled, seed=args.seed,
                )  # fmt: skip
            elif args.max_length is None:  # tokenized rows: as long as their longest
                args.max_length = max(len(ids) for ids in train_dataset["input_ids"]) if train_dataset is not None else None
            if args.max_length is not None:
                processing_class.model_max_length = args.max_length
        plan = plan_teacher(teacher_model, args, self.labeled if raw else None, processing_class)
        if isinstance(model, (str, os.PathLike)):
            model = StudentCohort.from_pretrained(
                base_path, id2label=id2label or id2label_from(train_dataset, eval_dataset), **args.cohort_kwargs()
            )
        if raw and model.label_names != list(label_names):
            raise ValueError(
                f"The cohort predicts {model.label_names}, but "
                f"train_dataset's labels are {list(label_names)}; build it with id2label from the data."
            )

        # ---- views ----
        self.student_views = parse_views(args.student_views, model.num_students)
        model.check_views(self.student_views)  # e.g. shuffle on a model with relative positions: refused before training

        # ---- teacher: made from the plan (trained here if none was given), its logits computed once and cached ----
        self.teacher_type = plan.kind
        self.card_data.base_model = self.base_model_name
        self.teacher: Teacher | None = None  # what the cached teacher logits come from
        self.teacher_calibration = None  # with teacher_temperature="fit": the fitted temperature and its evidence
        self.teacher_check = None  # the teacher's accuracy on the labeled rows beside the majority class's share
        self.temperature_setting = args.teacher_temperature  # the teacher's default when None (factory)
        online = teacher_model  # tokenized rows: a teacher_model is the online teacher
        if raw:
            t0 = time.perf_counter()
            built = build_teacher(plan, args, self.labeled, base=model.base_model_name_or_path, base_name=self.base_model_name)
            self.teacher, online, self.card_data.teacher_name = built.teacher, built.online, built.name
            self.temperature_setting = temperature_setting(self.teacher, args, self.labeled)
            fit = self.temperature_setting == "fit"
            rows = training_dataset(self.labeled, self.unlabeled)
            if self.teacher is not None and not args.online_teacher:  # an online teacher's logits are live
                if args.world_size > 1:  # SetFit trains under DDP: every process joins (see train_in_every_process)
                    train_in_every_process(teachers_to_train(self.teacher, self.labeled, fit_temperature=fit, seed=args.seed))
                if args.lambda_embedding > 0:
                    self.teacher.keep_embeddings()
                plain = rows
                with args.main_process_first(desc="teacher logits"):  # computed once, read by the other processes
                    rows = self.teacher.add_logits(rows, max_length=args.max_length)
                    if args.lambda_embedding > 0:
                        rows = self.teacher.add_embeddings(rows, max_length=args.max_length)
                if fit:  # on the teacher's held-out predictions of the labeled rows
                    with args.main_process_first(desc="teacher temperature"):
                        self.teacher_calibration = fitted_teacher_temperature(
                            self.teacher, self.labeled, seed=args.seed, max_length=args.max_length
                        )
                self.teacher_check = self._score_teacher(plain, rows, args)  # before it teaches: refused if it is no better than chance
            self.card_data.wall_time_s["teacher_s"] = time.perf_counter() - t0
            train_dataset = tokenize(rows, processing_class, args.max_length)
            eval_dataset = _map_eval(eval_dataset, lambda rows, key: tokenize(
                rows.rename_column("label", "labels"), processing_class, args.max_length
            ))  # fmt: skip
        if args.online_teacher:
            if online is None:
                raise ValueError("online_teacher=True needs a teacher_model (a classifier with the cohort's labels).")
            if isinstance(online, (str, os.PathLike)):
                online = AutoModelForSequenceClassification.from_pretrained(online, use_safetensors=True)
            model.attach_teacher(online)
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
        # the teacher's temperature: as set, fitted on the labeled rows ("fit"), or the teacher's default
        self.teacher_temperature = self.temperature_setting
        if self.teacher_temperature == "fit":
            self.teacher_temperature = self.teacher_calibration["temperature"] if self.teacher_calibration else 1.0
        elif self.teacher_temperature is None:
            self.teacher_temperature = getattr(self.teacher, "default_temperature", 1.0)
        self.chosen_student: int | None = None
        self.saved_results: RunResults | None = None  # what the last save_model wrote to results.json
        self._saved_to, self.started = None, started

    # ---- teacher ----

    def _score_teacher(self, plain: Dataset, rows: Dataset, args: MutualDistillationConfig) -> dict:
        """[`score_teacher`] on the labeled rows, the first rows of the training rows (`plain`; `rows`: with the
        teacher's logits). An ensemble member's logits of `plain` are read back from its cache."""
        labeled_count = len(self.labeled)

        def on_labeled(teacher: Teacher) -> np.ndarray:
            done = rows if teacher is self.teacher else teacher.add_logits(plain, max_length=args.max_length)
            return np.asarray(done.select(range(labeled_count))["teacher_logits"])

        return score_teacher(self.teacher, self.labeled, on_labeled, calibration=self.teacher_calibration,
                             allow_weak=args.allow_weak_teacher)  # fmt: skip

    def teacher_logits(self, rows: Dataset) -> np.ndarray:
        """The teacher's logits `[N, C]` for `rows` (a `text` column): the live online teacher, or the cached
        offline teacher's (computed once under `main_process_first`)."""
        cohort = self.accelerator.unwrap_model(self.model)
        if cohort.teacher is not None:
            return predict_logits(cohort.teacher, self.processing_class, list(rows["text"]), max_length=self.args.max_length)
        if self.teacher is None:
            raise ValueError("This trainer has no teacher: it was given tokenized rows with their teacher logits.")
        with self.args.main_process_first(desc="teacher logits"):
            done = self.teacher.add_logits(rows.select_columns(["text"]), max_length=self.args.max_length)
        return np.asarray(done["teacher_logits"], dtype=np.float32)

    # ---- data ----

    def model_rows(self, rows: Dataset, source: str = "dataset", *, labels_required: bool = True) -> Dataset:
        """Raw rows (`args.text_column`, and `args.label_column` with the run's labels) -> tokenized rows the cohort
        evaluates or predicts, checked like the constructor's eval set (naming `source`); tokenized rows are kept as
        they are. Without `labels_required`, rows without a label column are taken as texts to predict."""
        if not isinstance(rows, Dataset) or "input_ids" in rows.column_names:
            return rows
        args = self.args
        if labels_required or args.label_column in rows.column_names:
            label_names = self.accelerator.unwrap_model(self.model).label_names
            rows = labeled_rows(rows, args.text_column, args.label_column, label_names=label_names, source=source)
            rows = rows.rename_column("label", "labels")
        else:
            rows = unlabeled_rows(rows, args.text_column, label_column=args.label_column, source=source)
        return tokenize(rows, self.processing_class, args.max_length)

    def evaluate(self, eval_dataset=None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"):
        """Trainer's `evaluate`; `eval_dataset` may also be raw rows, like the constructor's ([`model_rows`])."""
        eval_dataset = _map_eval(eval_dataset, self.model_rows) if not isinstance(eval_dataset, str) else eval_dataset
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset: Dataset, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"):
        """Trainer's `predict`; `test_dataset` may also be raw rows, with or without labels ([`model_rows`]).
        `predictions` are `[N, K, C]`, one column per student: [`student_logits`] gives one student's `[N, C]`."""
        rows = self.model_rows(test_dataset, "test_dataset", labels_required=False)
        return super().predict(rows, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def student_logits(self, rows: Dataset, student: int | None = None) -> np.ndarray:
        """`[N, C]` logits of one student on `rows` (raw or tokenized, labels optional): `student`, by default the
        exported one ([`select_student`] chooses it when none was chosen yet), as its exported model gives them."""
        if student is None:
            student = self.chosen_student if self.chosen_student is not None else self.select_student()
        num_students = self.accelerator.unwrap_model(self.model).num_students
        if not 0 <= student < num_students:
            raise ValueError(f"student={student}: this cohort has students 0 to {num_students - 1}.")
        return self.predict(rows).predictions[:, student]

    def _get_eval_sampler(self, eval_dataset):
        # Trainer orders evaluation rows by length under train_sampling_strategy="group_by_length" (this config's
        # default), so predict() would return rows in another order than given; evaluate in the rows' own order
        # (under several processes accelerate shards them in order, as Trainer does without length grouping).
        if eval_dataset is None or self.args.world_size > 1:
            return None
        return torch.utils.data.SequentialSampler(eval_dataset)

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
            views = student_views(
                self.student_views, cohort, model_inputs, labels, teacher_logits, temperature=self.args.temperature,
                cutoff_rate=self.args.cutoff_rate, adversarial_epsilon=self.args.adversarial_epsilon,
            ) if model.training else None  # fmt: skip
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
            thresholds = next(cb for cb in self.callback_handler.callbacks if isinstance(cb, AdaptiveThresholds))
            kd_weights, kept = thresholds.weigh(logits, teacher_logits, unlabeled, gather=self.accelerator.gather,
                                                training=model.training, id2label=cohort.config.id2label)  # fmt: skip
            for key, value in kept.items():  # the share of rows kept, per class
                self._metrics["train"][key].append(value)
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
            raise_if_not_finite(gathered, step=self.state.global_step + 1)  # every process sees it and stops
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
        labels = inputs.get("labels")
        if labels is not None and bool((labels == IGNORE_INDEX).all()):  # texts to predict: no metrics to compute
            labels = None
        return loss.detach(), logits.detach(), labels  # logits [B, K, C]: one column per student

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
        labeled_count = num_labeled(rows)
        has_unlabeled = labeled_count < len(rows)
        end = min(len(rows), labeled_count + (max_rows or self.args.selection_rows))
        chosen_rows = rows.select(range(labeled_count, end) if has_unlabeled else range(labeled_count))
        logits = predict_logits(cohort, self.processing_class, list(chosen_rows["text"]), max_length=self.args.max_length)
        if not has_unlabeled:
            reference = labels[:labeled_count]
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
        """The supervised-only student of this run ([`nanonet_hf.baseline.supervised_baseline`]), recorded for the
        results and the card."""
        return supervised_baseline(self)

    def results(self) -> RunResults:
        """What the run produced, as `results.json` holds it and the model card renders it ([`collect_results`])."""
        return collect_results(self)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Export the run into `output_dir` (default `args.output_dir`), then push it with `args.push_to_hub`
        ([`push_to_hub`]): `student/`, the chosen student ([`select_student`] when none was chosen) as a plain
        transformers model of its own depth with its tokenizer and model card, `student_adapter/` (its PEFT adapter
        and head), `student_base/` (the cut frozen base the adapter applies to), with several students every one as
        `students/student_{k}/` with its own card, and `results.json` ([`RunResults`]), whose family table times each
        exported student and the teacher on this machine's CPU.

        Trainer's own checkpoints (`_internal_call`) hold the students' trainable weights only (see `_save`)."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        self.export(output_dir)
        if self.args.push_to_hub:
            self.push_to_hub()

    def export(self, output_dir: str | None = None) -> RunResults:
        """The export of [`save_model`], without the push; returns what `results.json` holds."""
        if self.state.global_step == 0:
            raise RuntimeError("save_model() before train(): there is no trained student to save. Call train() first.")
        output_dir = output_dir or self.args.output_dir
        if os.path.abspath(output_dir) not in (os.path.abspath(self.args.output_dir), self._saved_to and os.path.abspath(self._saved_to)):
            check_no_previous_export(output_dir, overwrite=self.args.overwrite_output_dir, resuming=False)
        results = self.results()
        # the static student's rows; without cached teacher logits, from the cohort's predictions, in every process
        static_rows = static_training_rows(self) if "static" in self.args.export_formats else None
        if self.is_world_process_zero():
            t0 = time.perf_counter()
            cohort = self.accelerator.unwrap_model(self.model)
            exported = export_student(cohort, results.chosen_student, output_dir, self.processing_class)
            results.exported = {"student_dir": exported.student_dir, "adapter_dir": exported.adapter_dir}
            folders = export_family(cohort, output_dir, self.processing_class) if cohort.num_students > 1 else [exported.student_dir]
            tiers, tier_predictors = export_tiers(self, exported.student_dir, output_dir, static_rows) if self.args.export_formats else ([], {})
            results.family = family_table(self, results, folders, output_dir, tiers, tier_predictors)
            results.tiers = tiers or None
            if cohort.teacher is not None:  # what the students last learned from, as it ended up
                with atomic_directory(os.path.join(output_dir, "online_teacher")) as tmp:
                    cohort.teacher.save_pretrained(tmp)
                    self.processing_class.save_pretrained(tmp)
            wall = results.wall_time_s
            wall["export_s"] = round(time.perf_counter() - t0, 1)
            wall["total_s"] = round(wall.pop("total_s") + wall["export_s"], 1)  # the total comes last
            results.save(output_dir)
            if results.students is not None:
                write_model_card(output_dir, license=self.args.card_license)  # student/README.md (+ learning_curve.png)
                for k, folder in enumerate(folders if cohort.num_students > 1 else []):
                    write_model_card(output_dir, target_dir=folder, license=self.args.card_license, student=k)
            else:
                logger.warning("No eval_dataset: %s/student has no model card (its results table needs one).", output_dir)
        self.accelerator.wait_for_everyone()
        self._saved_to, self.saved_results = output_dir, results
        return results

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
        """Publish the exported student with its card to `repo_id` (default `args.hub_model_id`), exporting it first
        if that was not done: [`nanonet_hf.hub.push_student`] (`kwargs` go to it, e.g. `adapter_repo_id`, or
        `family=True` for every student). Returns its [`PushResult`] on the main process."""
        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise ValueError("push_to_hub needs a repo_id (or args.hub_model_id), e.g. 'me/my-classifier'.")
        check_repo_id(repo_id)
        if self._saved_to is None:
            self.export()
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


def _named(eval_dataset: Dataset | dict | None) -> list[tuple[str, Dataset]]:
    """The eval set(s) with the name a message gives them."""
    if isinstance(eval_dataset, dict):
        return [(f"eval_dataset[{key!r}]", rows) for key, rows in eval_dataset.items()]
    return [("eval_dataset", eval_dataset)] if eval_dataset is not None else []


def _map_eval(eval_dataset: Dataset | dict | None, function: Callable[[Dataset, str], Dataset]):
    """Apply `function(rows, name)` to the raw (untokenized) eval set(s); tokenized ones are kept as they are."""
    def one(rows: Dataset, name: str) -> Dataset:
        return rows if "input_ids" in rows.column_names else function(rows, name)

    if isinstance(eval_dataset, dict):
        return {key: one(rows, name) for (name, rows), key in zip(_named(eval_dataset), eval_dataset)}
    return one(eval_dataset, "eval_dataset") if eval_dataset is not None else None
