import os
from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from transformers import TrainingArguments
from transformers.utils import is_torch_npu_available, is_torch_xpu_available

from .cohort import parse_student_layers

SUPPORTED_ADAPTERS = ("lora",)


@dataclass
class MutualDistillationConfig(TrainingArguments):
    r"""
    Configuration for [`MutualDistillationTrainer`]: K students on one frozen base learn from a few labels, a teacher's
    logits on unlabeled text, and each other.

    Only the parameters specific to mutual distillation are listed here. For the others, see
    [`~transformers.TrainingArguments`].

    > Parameters that control the cohort

    num_students (`int`, *optional*, defaults to `4`):
        Number of students K. Each is a LoRA adapter with its own classification head.
    adapter_type (`str`, *optional*, defaults to `"lora"`):
        Adapter of each student. Only LoRA can run a mixed adapter batch (PEFT's IA3, LoHa and others would run one
        adapter for every row), so other values are refused.
    lora_r (`int`, *optional*, defaults to `8`):
        LoRA rank.
    lora_alpha (`int`, *optional*, defaults to `16`):
        LoRA scaling numerator (scale = alpha / r).
    lora_dropout (`float`, *optional*, defaults to `0.0`):
        Dropout on the LoRA input.
    lora_target_modules (`list[str]`, *optional*):
        Modules that get LoRA. Defaults to PEFT's choice for the architecture (`query`, `value` for BERT).
    student_layers (`str`, *optional*):
        Cut the base to fewer layers: a count (`"3"` keeps the first three) or indices (`"0,2,4"`). Defaults to all.
    adapter_layers (`str`, *optional*):
        Layers of the (cut) base that get LoRA: a count (`"2"`: the top two) or indices (`"1,2"`). The layers below the
        first adapted one are a frozen trunk that runs once per batch for all students, which is where the cohort
        saves compute over training the students one by one. Defaults to all layers (no shared trunk).

    > Parameters that control the losses

    temperature (`float`, *optional*, defaults to `2.0`):
        Temperature τ of the distillation loss.
    lambda_kd (`float`, *optional*, defaults to `1.0`):
        Weight of distillation from the teacher's logits, on unlabeled rows.
    lambda_mut (`float`, *optional*, defaults to `1.0`):
        Weight of the mutual loss between students, on all rows.
    mutual_loss (`str`, *optional*, defaults to `"kl"`):
        `"kl"` (deep mutual learning) or `"mse"` of logits (DisCo, PS-Net).
    rampup_ratio (`float`, *optional*, defaults to `0.2`):
        The mutual weight ramps linearly from 0 to `lambda_mut` over this fraction of the training steps.
    kd_weighting (`str`, *optional*, defaults to `"none"`):
        `"confidence_need"` weights each unlabeled row, per student, by teacher confidence × student entropy and keeps
        it only above per-class thresholds (LLKD; see [`nanonet_hf.losses.confidence_need_weights`]).
    threshold_momentum (`float`, *optional*, defaults to `0.9`):
        EMA momentum of those per-class thresholds ([`nanonet_hf.weighting.AdaptiveThresholds`]).

    > Parameters that control the data

    unlabeled_ratio (`float`, *optional*, defaults to `3.0`):
        Unlabeled rows per labeled row in each training batch.
    max_length (`int`, *optional*, defaults to `64`):
        Maximum tokens per text.

    > Changed defaults of TrainingArguments

    learning_rate (`float`, defaults to `1e-3`): LoRA wants a high learning rate; at 5e-5 it learns nothing in a
        short run.
    logging_steps (`float`, defaults to `10`).
    ddp_find_unused_parameters (`bool`, defaults to `False`): Trainer would turn it on for any model that is not a
        `PreTrainedModel`; every trainable tensor of a cohort gets a gradient at every step, so the search is waste.
    label_names (`list[str]`, defaults to `["labels"]`): the cohort's forward takes no labels, so Trainer cannot
        find them by signature.
    """

    # ---- cohort ----
    num_students: int = field(
        default=4, metadata={"help": "Number of students K (each a LoRA adapter with its own head)."}
    )
    adapter_type: str = field(
        default="lora", metadata={"help": "Adapter of each student; only 'lora' can run a mixed adapter batch."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules that get LoRA; defaults to PEFT's choice for the architecture."}
    )
    student_layers: str | None = field(
        default=None,
        metadata={"help": "Keep fewer base layers: a count ('3': the first three) or indices ('0,2,4'). Default: all."},
    )
    adapter_layers: str | None = field(
        default=None,
        metadata={
            "help": "Layers that get LoRA: a count ('2': the top two) or indices ('1,2'); the layers below run once "
            "for all students. Default: all."
        },
    )

    # ---- losses ----
    temperature: float = field(default=2.0, metadata={"help": "Temperature of the distillation loss."})
    lambda_kd: float = field(default=1.0, metadata={"help": "Weight of distillation from the teacher (unlabeled rows)."})
    lambda_mut: float = field(default=1.0, metadata={"help": "Weight of the mutual loss between students."})
    mutual_loss: str = field(
        default="kl", metadata={"help": "Mutual loss: 'kl' (deep mutual learning) or 'mse' of logits (DisCo).", "choices": ["kl", "mse"]}
    )
    rampup_ratio: float = field(
        default=0.2, metadata={"help": "Fraction of training steps over which the mutual weight ramps up from 0."}
    )
    kd_weighting: str = field(
        default="none",
        metadata={
            "help": "Weighting of distillation rows: 'none' (every unlabeled row alike) or 'confidence_need' (LLKD: "
            "rows where the teacher is confident and the student uncertain, with per-class thresholds moved by EMA).",
            "choices": ["none", "confidence_need"],
        },
    )
    threshold_momentum: float = field(
        default=0.9, metadata={"help": "EMA momentum of the per-class thresholds of kd_weighting='confidence_need'."}
    )

    # ---- data ----
    unlabeled_ratio: float = field(default=3.0, metadata={"help": "Unlabeled rows per labeled row in a training batch."})
    max_length: int = field(default=64, metadata={"help": "Maximum tokens per text."})

    # ---- changed defaults ----
    learning_rate: float = field(default=1e-3, metadata={"help": "Initial learning rate (LoRA wants ~1e-3)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Every student's adapter and head get a gradient at every step, so DDP need not search."},
    )
    restore_callback_states_from_checkpoint: bool = field(
        default=True,
        metadata={
            "help": "Restore stateful callbacks on resume; the LLKD thresholds are one, and a resumed run should "
            "continue with them as an uninterrupted one would."
        },
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Keys of the labels in the batch."}
    )

    def __post_init__(self):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator():
            # Launched as several processes on a machine without GPU: without `use_cpu`, accelerate would give each
            # process its own run instead of one gloo group (every process training on the full data).
            self.use_cpu = True
        super().__post_init__()
        if self.num_students < 1:
            raise ValueError(f"num_students must be at least 1, got {self.num_students}")
        if self.adapter_type not in SUPPORTED_ADAPTERS:
            raise ValueError(
                f"adapter_type={self.adapter_type!r} cannot train a cohort in one forward: only LoRA honours PEFT's "
                f"per-row `adapter_names` (IA3, LoHa and others silently run one adapter for every row). Supported: "
                f"{list(SUPPORTED_ADAPTERS)}."
            )
        if self.mutual_loss not in ("kl", "mse"):
            raise ValueError(f"mutual_loss must be 'kl' or 'mse', got {self.mutual_loss!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("lambda_kd", "lambda_mut", "unlabeled_ratio", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kd_weighting not in ("none", "confidence_need"):
            raise ValueError(f"kd_weighting must be 'none' or 'confidence_need', got {self.kd_weighting!r}")
        if not 0 <= self.threshold_momentum <= 1:
            raise ValueError(f"threshold_momentum must be in [0, 1], got {self.threshold_momentum}")
        if not 0 <= self.rampup_ratio <= 1:
            raise ValueError(f"rampup_ratio must be in [0, 1], got {self.rampup_ratio}")
        parse_student_layers(self.student_layers)  # a malformed value fails here, before any work
        parse_student_layers(self.adapter_layers, "adapter_layers")

    def lora_config(self) -> LoraConfig:
        """The adapter settings every student shares."""
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
        )


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or is_torch_xpu_available() or is_torch_npu_available()
