import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable

import safetensors.torch
import torch
from datasets import Dataset
from torch import nn
from transformers import (
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

from .cohort import StudentCohort
from .data import MODEL_INPUT_NAMES, CohortCollator, MixedBatchSampler
from .losses import (
    IGNORE_INDEX,
    class_sums,
    confidence_need_weights,
    distillation_loss,
    linear_rampup,
    mutual_loss,
    supervised_loss,
)
from .metrics import cohort_metrics
from .mutual_distillation_config import MutualDistillationConfig
from .views import StudentViews, adversarial_step, make_student_views, parse_views
from .weighting import AdaptiveThresholds

logger = logging.getLogger(__name__)


class MutualDistillationTrainer(Trainer):
    """Trains a [`StudentCohort`]: K students on one frozen base, all in one forward per step.

    For student k, with labeled rows (x_l, y) and unlabeled rows x_u in the same batch:

        L^k = CE(z_k(x_l), y) + λ_kd · KD(t(x_u) ‖ z_k(x_u)) + λ_mut · r(t) · 1/(K−1) Σ_{j≠k} D(z_k, stopgrad z_j)

    and the step minimises Σ_k L^k. Teacher logits `t` come precomputed in a `teacher_logits` column (see
    [`nanonet_hf.teacher.add_teacher_logits`]); without that column the KD term is off. With `args.online_teacher`,
    `teacher_model` trains along (cross-entropy on the labeled rows, optionally distillation from the students) and
    its live logits are `t`. Either is divided by `args.teacher_temperature` first. With `args.student_views`,
    student k sees its own view of the batch ([`nanonet_hf.views`]) in training.

    Args:
        model ([`StudentCohort`] or `str`):
            The cohort, or a base model path/id from which one is built with the cohort settings of `args` and the
            label names of `train_dataset`'s `labels` (or `label`) `ClassLabel` feature.
        args ([`MutualDistillationConfig`], *optional*):
            Training configuration; defaults to one with `output_dir="nanonet_output"`.
        train_dataset (`datasets.Dataset`, *optional*):
            Tokenized rows with `labels` (-100 for unlabeled), optional `teacher_logits`, labeled rows first (see
            [`nanonet_hf.data.training_dataset`]).
        eval_dataset (`datasets.Dataset` or `dict[str, datasets.Dataset]`, *optional*):
            Tokenized labeled rows; evaluation reports each student, the ensemble and the best student.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer; loaded from `model` when that is a path.
        data_collator, compute_metrics, callbacks, optimizers:
            As in [`~transformers.Trainer`]; defaults are [`CohortCollator`] and [`cohort_metrics`].
        teacher_model ([`~transformers.PreTrainedModel`] or `str`, *optional*):
            The online teacher (`args.online_teacher`): a sequence classifier with the cohort's labels and tokenizer,
            e.g. the full-depth base fine-tuned on the labels (`nanonet_hf.train_teacher`).
    """

    _tag_names = ["nanonet", "mutual-distillation", "peft"]
    _name = "Mutual Distillation"
    # compute_loss returns a per-batch mean, not a sum normalised by num_items_in_batch: Trainer must divide it by
    # the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: StudentCohort | str,
        args: MutualDistillationConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        teacher_model: PreTrainedModel | str | None = None,
    ):
        # ---- args ----
        if args is None:
            args = MutualDistillationConfig(output_dir="nanonet_output")
        if not isinstance(args, MutualDistillationConfig):
            raise TypeError(f"args must be a MutualDistillationConfig, got {type(args).__name__}")

        # ---- model ----
        if isinstance(model, (str, os.PathLike)):
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model)
            model = StudentCohort.from_pretrained(
                model, id2label=_id2label_from(train_dataset, eval_dataset), **args.cohort_kwargs()
            )
        if not isinstance(model, StudentCohort):
            raise TypeError(f"model must be a StudentCohort or a model path, got {type(model).__name__}")

        # ---- views and online teacher ----
        self.student_views = parse_views(args.student_views, model.num_students)
        model.check_views(self.student_views)  # e.g. shuffle on a model with relative positions: refused before training
        if args.online_teacher:
            if teacher_model is None:
                raise ValueError("online_teacher=True needs a teacher_model (a classifier with the cohort's labels).")
            if isinstance(teacher_model, (str, os.PathLike)):
                teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher_model, use_safetensors=True)
            model.attach_teacher(teacher_model)
        elif teacher_model is not None:
            raise ValueError("teacher_model is only used with online_teacher=True; an offline teacher's logits go in "
                             "the `teacher_logits` column (nanonet_hf.add_teacher_logits).")

        # ---- data ----
        if args.train_sampling_strategy not in ("random", "group_by_length"):
            raise ValueError(
                f"train_sampling_strategy={args.train_sampling_strategy!r} is not supported: every batch mixes "
                "labeled and unlabeled rows in a seeded order (MixedBatchSampler). Use 'random' or 'group_by_length'."
            )
        if data_collator is None:
            if processing_class is None:
                raise ValueError("Pass processing_class (the tokenizer) or a data_collator.")
            data_collator = CohortCollator(processing_class)

        # ---- metrics ----
        # already passed through accelerator.gather; averaged and cleared in `log`
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

        # ---- LLKD thresholds: a stateful callback, so checkpoints save and resume restores them ----
        if args.kd_weighting == "confidence_need":
            callbacks = [*(callbacks or []), AdaptiveThresholds(model.config.num_labels, momentum=args.threshold_momentum)]

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
        if args.train_sampling_strategy == "group_by_length" and train_dataset is not None:
            self._length_column(train_dataset)  # a dataset without token counts fails here, before any training

    # ---- data ----

    def _set_signature_columns_if_needed(self):
        # The cohort's forward takes the model inputs only; the loss also needs `labels` and `teacher_logits`.
        # Trainer would drop those columns, so keep them explicitly.
        if self._signature_columns is None:
            self._signature_columns = [*MODEL_INPUT_NAMES, "labels", "teacher_logits"]

    def _length_column(self, train_dataset: Dataset) -> str:
        """The column that gives group_by_length its token counts: `length_column_name`, else `input_ids`."""
        for column in (self.args.length_column_name, "input_ids"):
            if column in train_dataset.column_names:
                return column
        raise ValueError(
            f"group_by_length needs token counts: a `{self.args.length_column_name}` column "
            "(`length_column_name`) or tokenized `input_ids` in the training dataset."
        )

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
        if teacher_logits is not None and args.teacher_temperature != 1.0:  # sharpen (< 1) or soften the teacher
            teacher_logits = teacher_logits.float() / args.teacher_temperature
        unlabeled = labels == IGNORE_INDEX  # distillation, from the teacher or the students, on these rows only
        with self.accelerator.autocast():
            views = self._views(cohort, model_inputs, labels, unlabeled, teacher_logits) if model.training else None
        logits = model(**model_inputs, views=views)  # [B, K, C]
        if teacher_loss is not None and args.lambda_teacher_mutual > 0:
            from_students = distillation_loss(live[:, None], logits.detach().mean(dim=1), temperature=args.temperature, weights=unlabeled)[0]
            teacher_loss = teacher_loss + args.lambda_teacher_mutual * from_students

        sup = supervised_loss(logits, labels)  # [K]
        if teacher_logits is not None and args.lambda_kd > 0:
            weights = self._confidence_need(logits, teacher_logits, unlabeled) if args.kd_weighting == "confidence_need" else unlabeled
            kd = distillation_loss(logits, teacher_logits, temperature=args.temperature, weights=weights)  # [K]
        else:
            kd = torch.zeros_like(sup)
        mut = mutual_loss(logits, kind=args.mutual_loss)  # [K]
        ramp = linear_rampup(self.state.global_step, self.state.max_steps, ratio=args.rampup_ratio) if model.training else 1.0
        per_student = sup + args.lambda_kd * kd + args.lambda_mut * ramp * mut  # [K]
        loss = per_student.sum()
        mode = "train" if model.training else "eval"
        if teacher_loss is not None:
            loss = loss + teacher_loss
            self._metrics[mode]["loss_teacher"].append(self.accelerator.gather(teacher_loss.detach()[None]).mean().item())

        terms = torch.stack([sup, kd, mut, per_student]).detach()  # [4, K]
        # one row per process: `gather`, not `gather_for_metrics`, whose end-of-data trimming counts samples
        gathered = self.accelerator.gather(terms[None])  # [processes, 4, K]
        if mode == "train":
            _raise_if_not_finite(gathered, step=self.state.global_step + 1)  # every process sees it and stops
        terms = gathered.mean(dim=0)  # [4, K] averaged over processes
        metrics = self._metrics[mode]
        for name, row in zip(("sup", "kd", "mut"), terms[:3]):
            metrics[f"loss_{name}"].append(row.mean().item())
        for k, value in enumerate(terms[3].tolist()):
            metrics[f"student_{k}_loss"].append(value)
        if mode == "train":
            metrics["mutual_weight"].append(args.lambda_mut * ramp)
        return (loss, logits) if return_outputs else loss

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


LOSS_TERMS = ("supervised", "distillation", "mutual")


def _raise_if_not_finite(terms: torch.Tensor, *, step: int) -> None:
    """`terms` `[processes, 4, K]` (supervised, distillation, mutual, total per student): stop at the first NaN/inf
    with the step, the student and the loss term, before the optimizer can write it into the weights."""
    bad = (~torch.isfinite(terms[:, :3])).nonzero()
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
