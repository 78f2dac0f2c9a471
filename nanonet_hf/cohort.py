"""A cohort of K students on ONE frozen base: build it, run every student in one forward, read its trainable state.

Each student is a LoRA adapter (named `student_0` … `student_{K-1}`) with its own copy of the classification head
(PEFT's `modules_to_save`). Adapters may sit on the top layers only (`adapter_layers`); the layers below the first
adapted layer are then a shared trunk. A forward runs the embeddings and the trunk ONCE on the batch (nothing there
requires grad, so autograd records nothing), repeats the hidden states K times, student-major, at the first adapted
layer, and routes row block k through adapter k and head k with PEFT's mixed adapter batch.

PEFT only allows mixed adapter batches at inference: `LoraModel._enable_peft_forward_hooks` refuses `adapter_names`
in training mode, and removes its hooks when the forward returns. Under gradient checkpointing the backward pass
re-runs the forward of each layer, and a hook that is gone by then routes every row through the active adapter,
which silently gives wrong gradients. So the cohort registers the same kind of pre-hook itself, once, on every
`LoraLayer` and head wrapper, and keeps the routing of the last forward until `release_routing()` (called by the
trainer after `backward()`) or until the next forward replaces it.

On plain LoRA Linear layers (all of them, with the usual configs) PEFT's per-adapter gather/scatter is skipped: the
rows go to PEFT as `"__base__"` rows (base layer only) and a forward hook adds the K students' updates with two
batched matmuls over the student-major row blocks ([`nanonet_hf.block_lora`]).
"""

import contextlib
import copy
import functools
import os
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.constants import DUMMY_TARGET_MODULES
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from .bias_students import StudentBiases
from .block_lora import BASE_ROWS, block_lora_update, supports_block_lora
from .views import StudentViews

STUDENT_PREFIX = "student_"
ADAPTER_TYPES = ("lora", "bias")


def student_name(index: int) -> str:
    return f"{STUDENT_PREFIX}{index}"


def parse_student_layers(
    value: int | str | Sequence[int] | None, name: str = "student_layers"
) -> int | list[int] | None:
    """Read a layer choice (`student_layers`, `adapter_layers`) from a config: `None`, a count (`4` or `"4"`) or
    indices (`[0, 2, 4]` or `"0,2,4"`)."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        parts = [part.strip() for part in value.replace(" ", ",").split(",") if part.strip()]
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            raise ValueError(
                f"{name} must be a layer count like '3' or layer indices like '0,2,4', got {value!r}"
            ) from None
        return numbers[0] if len(numbers) == 1 and "," not in value else numbers
    return [int(index) for index in value]


def _encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The `nn.ModuleList` that holds the encoder's `num_hidden_layers` blocks (`bert.encoder.layer` and the like)."""
    num_layers = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(
        f"Cannot find the {num_layers} encoder layers of {type(model).__name__}, so `student_layers` cannot cut it."
    )


def select_layers(num_layers: int, student_layers: int | Sequence[int] | None) -> list[int]:
    """Indices of the layers to keep out of `num_layers`: a count N keeps the first N, a list keeps those."""
    if student_layers is None:
        return list(range(num_layers))
    if isinstance(student_layers, int):
        if not 1 <= student_layers <= num_layers:
            raise ValueError(f"student_layers={student_layers} must be between 1 and the base's {num_layers} layers")
        return list(range(student_layers))
    return _check_layer_indices("student_layers", student_layers, num_layers, f"the base has {num_layers} layers")


def select_adapter_layers(num_layers: int, adapter_layers: int | Sequence[int] | None) -> list[int]:
    """Indices (in the cut base) of the layers that get adapters: a count N means the top N layers, a list those."""
    if adapter_layers is None:
        return list(range(num_layers))
    if isinstance(adapter_layers, int):
        if not 1 <= adapter_layers <= num_layers:
            raise ValueError(
                f"adapter_layers={adapter_layers} must be between 1 and the student's {num_layers} layers"
            )
        return list(range(num_layers - adapter_layers, num_layers))
    return _check_layer_indices(
        "adapter_layers", adapter_layers, num_layers, f"the student has {num_layers} layers after student_layers"
    )


def _check_layer_indices(name: str, indices: Sequence[int], num_layers: int, context: str) -> list[int]:
    """`indices` as a list, or a ValueError naming the option `name` unless they are distinct, increasing and in
    0..num_layers−1."""
    chosen = list(indices)
    bad = [index for index in chosen if not 0 <= index < num_layers]
    if not chosen or bad or len(set(chosen)) != len(chosen) or chosen != sorted(chosen):
        raise ValueError(
            f"{name}={chosen} must be distinct increasing layer indices in 0..{num_layers - 1} ({context})"
        )
    return chosen


def keep_layers(model: PreTrainedModel, kept: Sequence[int]) -> None:
    """Cut `model` in place to the encoder layers `kept` (indices from `select_layers`)."""
    layers = _encoder_layers(model)
    if len(kept) < len(layers):
        kept_modules = [layers[index] for index in kept]
        del layers[:]
        layers.extend(kept_modules)
        model.config.num_hidden_layers = len(kept)


def load_base(
    model_name_or_path: str | os.PathLike,
    *,
    id2label: dict[int, str],
    student_layers: int | Sequence[int] | None = None,
) -> tuple[PreTrainedModel, list[int]]:
    """Load a sequence classifier with the label space `id2label`, cut to `student_layers`; also return the kept
    layer indices.

    Only safetensors weights are loaded (`use_safetensors=True`), and remote code is never trusted.
    """
    id2label = {int(index): str(name) for index, name in id2label.items()}
    config = AutoConfig.from_pretrained(
        model_name_or_path,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    kept = select_layers(config.num_hidden_layers, parse_student_layers(student_layers))  # before loading weights
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            # a head for another label space is fine: every student re-initialises its own head
            model_name_or_path, config=config, use_safetensors=True, ignore_mismatched_sizes=True
        )
    except OSError as error:
        if os.path.isdir(model_name_or_path) and not any(
            name.endswith(".safetensors") for name in os.listdir(model_name_or_path)
        ):
            raise ValueError(
                f"{model_name_or_path} holds no .safetensors weights; nanonet_hf loads safetensors only (pickle "
                "weights can run code when loaded). Convert it with `save_pretrained` in a trusted environment."
            ) from error
        raise
    keep_layers(model, kept)
    return model, kept


def check_adapter_config(config: PeftConfig) -> None:
    """Refuse adapter settings that cannot route a mixed adapter batch (PEFT would ignore or reject the routing)."""
    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"Adapter type {config.peft_type.value if config.peft_type else type(config).__name__!r} cannot train "
            "a cohort in one forward: only LoRA honours PEFT's per-row `adapter_names` (IA3, LoHa and others "
            "silently run the active adapter for every row). Use a LoraConfig."
        )
    if config.use_dora:
        raise ValueError("LoRA with use_dora=True cannot run mixed adapter batches (PEFT raises); set use_dora=False.")
    if getattr(config, "target_parameters", None):
        raise ValueError("LoRA on `target_parameters` cannot run mixed adapter batches; use target_modules.")


class StudentCohort(nn.Module):
    """K students (LoRA adapter + own head each) on one frozen base; `forward` returns logits `[batch, K, classes]`.

    Build it with [`StudentCohort.from_pretrained`]. The base's weights are frozen; every student's LoRA weights and
    head are trainable, so an optimizer built afterwards sees all of them.

    Args:
        peft_model (`PeftModel`): a sequence-classification PEFT model holding adapters `student_0` … `student_{K-1}`.
        base_model_name_or_path (`str`): where the base was loaded from, kept for export.
        student_layers (`list[int]`): indices of the base layers the students keep.
    """

    def __init__(
        self,
        peft_model: PeftModel,
        *,
        base_model_name_or_path: str,
        student_layers: list[int],
        bias_layers: list[int] | None = None,
    ):
        super().__init__()
        self.peft_model = peft_model
        self.base_model_name_or_path = str(base_model_name_or_path)
        self.student_layers = list(student_layers)
        self.student_names = sorted(
            (name for name in peft_model.peft_config if name.startswith(STUDENT_PREFIX)),
            key=lambda name: int(name[len(STUDENT_PREFIX) :]),
        )
        if not self.student_names:
            raise ValueError(f"The PEFT model has no adapters named {STUDENT_PREFIX}0, {STUDENT_PREFIX}1, ...")
        for name in self.student_names:
            check_adapter_config(peft_model.peft_config[name])
        self._routing: list[str] | None = None
        self._trunk_rows: int | None = None  # batch size B of the forward whose hidden states are being expanded
        self._views: StudentViews | None = None  # the views of the last forward, kept like the routing
        self.teacher: PreTrainedModel | None = None  # an online teacher (`attach_teacher`)
        for module in peft_model.modules():
            if supports_block_lora(module, self.student_names):  # PEFT runs the base layer, the cohort adds LoRA
                module.register_forward_pre_hook(self._route_to_base, with_kwargs=True)
                module.register_forward_hook(self._add_block_lora, with_kwargs=True)
            elif isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)):
                module.register_forward_pre_hook(self._route, with_kwargs=True)
        # bias-only students: per-student offsets of the adapted layers' biases (a submodule, so they train and save)
        self.student_biases = None
        self.adapter_type = "lora"
        self.shared_layers = _shared_trunk_depth(peft_model)
        if bias_layers is not None:
            layers = _encoder_layers(peft_model.get_base_model())
            self.student_biases = StudentBiases(layers, bias_layers, len(self.student_names))
            self.adapter_type = "bias"
            self.shared_layers = bias_layers[0]
        if self.shared_layers is not None:
            for index, layer in enumerate(list(_encoder_layers(peft_model.get_base_model()))[self.shared_layers :]):
                layer.register_forward_pre_hook(
                    functools.partial(self._enter_student_layer, first=index == 0), with_kwargs=True
                )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        *,
        id2label: dict[int, str],
        num_students: int = 4,
        student_layers: int | Sequence[int] | None = None,
        adapter_layers: int | Sequence[int] | None = None,
        lora_config: LoraConfig | None = None,
        adapter_type: str = "lora",
        seed: int = 0,
    ) -> "StudentCohort":
        """Load the base, cut it, and add `num_students` students (LoRA, or bias-only) that start different.

        PEFT's default LoRA init is a no-op (B = 0) and `modules_to_save` copies one head, so K fresh students would
        be identical, the mutual loss exactly 0, and, with identical inputs, their gradients identical forever. Each
        student therefore gets its own seeded LoRA init and its own seeded head.

        Args:
            model_name_or_path (`str` or `os.PathLike`): a local folder or Hub id of an encoder.
            id2label (`dict[int, str]`): the label space.
            num_students (`int`, *optional*, defaults to `4`): K, at least 1.
            student_layers (`int` or `list[int]`, *optional*): keep the first N layers, or these layer indices.
            adapter_layers (`int` or `list[int]`, *optional*): put LoRA on the top N layers of the (cut) base, or on
                these indices of it; the layers below the first adapted one form a trunk that runs once for all
                students. Defaults to every layer.
            lora_config (`LoraConfig`, *optional*): adapter settings shared by all students; defaults to
                `LoraConfig(r=8, lora_alpha=16)` on PEFT's default target modules for the architecture.
            adapter_type (`str`, *optional*, defaults to `"lora"`): `"lora"`, or `"bias"` for bias-only students
                (BitFit): each trains an offset to every bias of the adapted layers, plus its head
                ([`StudentBiases`]); `lora_config` is then not used.
            seed (`int`, *optional*, defaults to `0`): student k is initialised from seed `seed + k`.
        """
        if num_students < 1:
            raise ValueError(f"num_students must be at least 1, got {num_students}")
        if adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type must be one of {list(ADAPTER_TYPES)}, got {adapter_type!r}")
        if adapter_type == "bias":  # PEFT keeps the per-student heads; the config targets no module
            lora_config = LoraConfig(target_modules=DUMMY_TARGET_MODULES)
        lora_config = copy.deepcopy(lora_config) if lora_config is not None else LoraConfig(r=8, lora_alpha=16)
        check_adapter_config(lora_config)
        lora_config.task_type = TaskType.SEQ_CLS
        base, kept = load_base(model_name_or_path, id2label=id2label, student_layers=student_layers)
        adapted = select_adapter_layers(len(kept), parse_student_layers(adapter_layers, "adapter_layers"))
        if len(adapted) < len(kept) and adapter_type == "lora":
            if lora_config.layers_to_transform is not None:
                raise ValueError("Give either adapter_layers or LoraConfig.layers_to_transform, not both.")
            lora_config.layers_to_transform = adapted
        base.requires_grad_(False)

        names = [student_name(k) for k in range(num_students)]
        peft_model = None
        for k, name in enumerate(names):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                if peft_model is None:
                    peft_model = get_peft_model(base, lora_config, adapter_name=name)
                else:
                    peft_model.add_adapter(name, lora_config)
                _reset_head(peft_model, name, std=getattr(base.config, "initializer_range", 0.02))
        peft_model.set_requires_grad(names, True)
        return cls(
            peft_model,
            base_model_name_or_path=str(model_name_or_path),
            student_layers=kept,
            bias_layers=adapted if adapter_type == "bias" else None,
        )

    # ---- properties ----

    @property
    def num_students(self) -> int:
        return len(self.student_names)

    def attach_teacher(self, teacher: PreTrainedModel) -> None:
        """Make `teacher` an online teacher (PS-Net) that trains with the students: a sequence classifier on the same
        labels, in the same order, reading the same token ids. It becomes part of the trainable state (checkpoints
        hold it); export ignores it."""
        teacher_labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
        labels = [self.config.id2label[i] for i in range(self.config.num_labels)]
        if teacher_labels != labels:
            raise ValueError(f"The online teacher predicts {teacher_labels}, but the students predict {labels}.")
        if getattr(teacher.config, "vocab_size", None) != getattr(self.config, "vocab_size", None):
            raise ValueError(
                f"The online teacher's vocabulary ({teacher.config.vocab_size} tokens) is not the students' "
                f"({self.config.vocab_size}): an online teacher reads the students' token ids, so it needs their "
                "tokenizer. Use an offline teacher (the `teacher_logits` column) for another tokenizer."
            )
        teacher.requires_grad_(True)
        self.teacher = teacher

    @property
    def config(self):
        """The (cut) base model's config, with the label space."""
        return self.peft_model.get_base_model().config

    # ---- one forward for all students ----

    def _route(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self._routing is not None:
            kwargs["adapter_names"] = self._routing
        return args, kwargs

    def _route_to_base(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self._routing is not None:
            kwargs["adapter_names"] = [BASE_ROWS] * len(self._routing)
        return args, kwargs

    def _add_block_lora(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        if self._routing is None:
            return None
        hidden = args[0] if args else kwargs["x"]
        return output + block_lora_update(module, hidden, self.student_names).to(output.dtype)

    def _enter_student_layer(self, module: nn.Module, args: tuple, kwargs: dict, *, first: bool) -> tuple[tuple, dict]:
        """Pre-hook of each adapted layer. Repeats the B-row inputs (the trunk's hidden states at the first adapted
        layer; the attention mask the model built once for B rows, at every adapted layer) K times, student-major;
        then applies the views: each student's cut tokens leave the attention mask, and its adversarial
        perturbation is added to the hidden states entering its first layer."""
        if self._trunk_rows is None and self._views is None:
            return args, kwargs
        if self._trunk_rows is not None:
            rows, copies = self._trunk_rows, self.num_students

            def expand(value):
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
                    return _repeat_rows(value, copies)
                if isinstance(value, tuple) and any(isinstance(item, torch.Tensor) for item in value):
                    return tuple(expand(item) for item in value)  # e.g. rotary (cos, sin)
                return value

            args, kwargs = tuple(expand(arg) for arg in args), {key: expand(value) for key, value in kwargs.items()}
        views = self._views
        if views is None:
            return args, kwargs
        args = list(args)
        hidden = args[0] if args else kwargs["hidden_states"]
        if first and views.perturbation is not None:
            hidden = hidden + views.perturbation.reshape(hidden.shape).to(hidden.dtype)
            if args:
                args[0] = hidden
            else:
                kwargs["hidden_states"] = hidden
        if views.key_mask is not None:
            keep = views.key_mask.reshape(hidden.shape[0], -1)
            if len(args) > 1:
                args[1] = _mask_keys(args[1], keep, hidden.dtype)
            else:
                kwargs["attention_mask"] = _mask_keys(kwargs.get("attention_mask"), keep, hidden.dtype)
        return tuple(args), kwargs

    def release_routing(self) -> None:
        """Forget the routing of the last forward; call after `backward()` (the trainer does)."""
        self._routing = None
        self._trunk_rows = None
        self._views = None
        if self.student_biases is not None:
            self.student_biases.rows = None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        views: StudentViews | None = None,
    ) -> torch.Tensor:
        """Logits of every student, `[batch, K, classes]`, from one forward: the shared trunk on the batch, the adapted
        layers and heads on a K× batch. `views` (see [`nanonet_hf.views`]) gives each student its own view of the
        batch."""
        batch, num_students = input_ids.shape[0], self.num_students
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if views is not None and self.shared_layers is None:
            raise ValueError("Data views need the students' adapters in the encoder layers (not on the embeddings).")
        shuffled = views is not None and views.position_ids is not None
        if shuffled and self.shared_layers != 0:
            raise ValueError(
                "The shuffle view moves tokens at the embeddings, so the students cannot share a trunk: use it "
                "with adapters on every layer (adapter_layers unset), or choose other views."
            )
        if shuffled or self.shared_layers is None:
            # repeat the inputs: adapters below the encoder layers (e.g. on embeddings), or per-student positions (the
            # embeddings then run per student, which is cheap; the encoder layers see K× rows already)
            inputs = {key: None if value is None else _repeat_rows(value, num_students) for key, value in inputs.items()}
            if shuffled:
                inputs["position_ids"] = views.position_ids.reshape(num_students * batch, -1)
        else:
            self._trunk_rows = batch
        self._views = views
        # student-major: rows k*B … (k+1)*B−1 go through student k. Kept after the forward for checkpoint recompute.
        self._routing = [name for name in self.student_names for _ in range(batch)]
        if self.student_biases is not None:
            self.student_biases.rows = "blocks"
        try:
            logits = self.peft_model(**inputs).logits
        finally:
            if not torch.is_grad_enabled():
                self.release_routing()  # no backward will follow
        return logits.view(num_students, batch, -1).transpose(0, 1)  # [B, K, C]

    @contextlib.contextmanager
    def single_student(self, name: str):
        """Make `name` the active adapter of `peft_model` for a plain forward, restoring the previous one after."""
        self.release_routing()
        previous = self.peft_model.active_adapter
        self.peft_model.base_model.set_adapter(name)
        if self.student_biases is not None:
            self.student_biases.rows = self.student_names.index(name)
        try:
            yield self.peft_model
        finally:
            if self.student_biases is not None:
                self.student_biases.rows = None
            self.peft_model.base_model.set_adapter(previous)
            # set_adapter freezes the other adapters; every student stays trainable
            self.peft_model.set_requires_grad(self.student_names, True)

    def student_heads(self, name: str) -> dict[str, nn.Module]:
        """Student `name`'s copy of each head (PEFT `modules_to_save`), by the head's path in the base model."""
        return _student_heads(self.peft_model, name)

    # ---- activation (gradient) checkpointing, called by Trainer when `activation_checkpointing=True` ----

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        # Non-reentrant checkpointing needs no input that requires grad, so the frozen embeddings stay frozen.
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        self.peft_model.get_base_model().activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
        )

    def activation_checkpointing_disable(self) -> None:
        self.peft_model.get_base_model().activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.peft_model.get_base_model().is_activation_checkpointing

    # ---- trainable state (checkpoints) ----

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every student's LoRA weights and head: all that training changes."""
        return {name: param.detach().contiguous() for name, param in self.named_parameters() if param.requires_grad}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
        """Load what `trainable_state_dict` wrote; the keys must match exactly."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{source} does not match this cohort ({self.num_students} students): missing {len(missing)} "
                f"tensors (e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]}). Was it written "
                "with other num_students, lora settings or student_layers?"
            )
        self.load_state_dict(state_dict, strict=False)

    def num_trainable_parameters(self, per_student: bool = False) -> int:
        """Trainable parameters of the students (an online teacher's are not counted)."""
        students = [self.peft_model] + ([self.student_biases] if self.student_biases is not None else [])
        total = sum(param.numel() for module in students for param in module.parameters() if param.requires_grad)
        return total // self.num_students if per_student else total


def _repeat_rows(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """`[B, ...]` → `[copies·B, ...]`, student-major: block k is a copy of the whole batch for student k."""
    return tensor.repeat(copies, *([1] * (tensor.dim() - 1)))


def _mask_keys(mask: torch.Tensor | None, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The attention mask a layer receives (`None`, a 2D padding mask, or a 4D boolean or additive float mask), with
    the keys where `keep` `[N, L]` is False masked out for every query."""
    if mask is not None and mask.dim() == 2:  # flash attention's padding mask
        return mask * keep.to(mask.dtype)
    keep = keep[:, None, None, :]
    if mask is None:
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
    if mask.dtype == torch.bool:
        return mask & keep
    return mask.masked_fill(~keep, torch.finfo(mask.dtype).min)


def _shared_trunk_depth(peft_model: PeftModel) -> int | None:
    """How many encoder layers sit below the first LoRA layer (the trunk every student shares), or `None` when some
    LoRA layer lives outside the encoder layers, so that the students share nothing and inputs must be repeated."""
    try:
        layers = _encoder_layers(peft_model.get_base_model())
    except ValueError:
        return None
    in_layers = {id(module) for layer in layers for module in layer.modules() if isinstance(module, LoraLayer)}
    if any(isinstance(module, LoraLayer) and id(module) not in in_layers for module in peft_model.modules()):
        return None
    adapted = [index for index, layer in enumerate(layers) if any(isinstance(m, LoraLayer) for m in layer.modules())]
    return adapted[0] if adapted else len(layers)


def _student_heads(peft_model: PeftModel, adapter_name: str) -> dict[str, nn.Module]:
    """`adapter_name`'s copy of each head (PEFT `modules_to_save`), by the head's path in the base model."""
    return {
        path: module.modules_to_save[adapter_name]
        for path, module in peft_model.get_base_model().named_modules()
        if isinstance(module, AuxiliaryTrainingWrapper) and adapter_name in getattr(module, "modules_to_save", {})
    }


def _reset_head(peft_model: PeftModel, adapter_name: str, *, std: float) -> None:
    """Re-initialise the head copy of `adapter_name` from the current RNG (normal(0, std) weights, zero biases)."""
    heads = _student_heads(peft_model, adapter_name)
    if not heads:
        raise ValueError(f"No classification head was found for {adapter_name}: the base has no `classifier`/`score`.")
    for head in heads.values():
        for layer in head.modules():
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=std)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
