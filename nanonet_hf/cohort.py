"""A cohort of K students on ONE frozen base: build it and run every student in one forward.

Each student is an adapter (LoRA, named `student_0` … `student_{K-1}`, or bias offsets) with its own copy of the
classification head (PEFT's `modules_to_save`) and its own layers of the base: students may differ in depth
([`nanonet_hf.layer_plan`]). Adapters may sit on the top layers only (`adapter_layers`); the layers below the first
adapted layer (and below the first layer some student skips) are then a shared trunk. A forward runs the embeddings
and the trunk ONCE on the batch (nothing there requires grad, so autograd records nothing), repeats what the layers
above need K times, student-major, sends each student's row block through its own layers only, and routes block k
through adapter k and head k ([`nanonet_hf.routing`]). What differs between architectures (where the layers are, the
head, the positions) is one table, [`nanonet_hf.architectures`].
"""

import contextlib
import copy
import logging
import os
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.constants import DUMMY_TARGET_MODULES
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from .architectures import ADAPTER_TYPES, Architecture, architecture_of
from .base_model import load_base
from .bias_students import StudentBiases
from .inference import mean_pool
from .layer_plan import LayerPlan, encoder_layers, keep_layers, plan_layers
from .routing import CohortRouter
from .views import StudentViews

logger = logging.getLogger(__name__)

STUDENT_PREFIX = "student_"


def student_name(index: int) -> str:
    return f"{STUDENT_PREFIX}{index}"


def check_cohort_matches(cohort: "StudentCohort", args) -> None:
    """Raise unless a hand-built cohort is the one `args` describes (K, each student's layers and adapted layers,
    adapter type): the config is the single source of truth of the run, and its card reports the config's values."""
    problems = []
    if cohort.num_students != args.num_students:
        problems.append(f"num_students: the cohort has {cohort.num_students}, args say {args.num_students}")
    if cohort.adapter_type != args.adapter_type:
        problems.append(f"adapter_type: the cohort's is {cohort.adapter_type!r}, args say {args.adapter_type!r}")
    if not problems:
        config = AutoConfig.from_pretrained(cohort.base_model_name_or_path)
        plan = plan_layers(config, args.student_layers, args.adapter_layers, args.num_students)[1]
        if plan.students != cohort.plan.students:
            problems.append(
                f"student_layers: the cohort's students keep layers {cohort.plan.students}, args give {plan.students}"
            )
        elif args.adapter_layers is not None and plan.adapted != cohort.plan.adapted:
            problems.append(
                f"adapter_layers: the cohort's students adapt positions {cohort.plan.adapted}, args give {plan.adapted}"
            )
    if problems:
        raise ValueError(
            "The StudentCohort disagrees with the MutualDistillationConfig: " + "; ".join(problems) + ". Pass the base "
            "model's id as `model` to build the cohort from the config, or make the two agree."
        )


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
    """K students (an adapter + its own head each) on one frozen base; `forward` returns logits `[batch, K, classes]`.

    Build it with [`StudentCohort.from_pretrained`]. The base's weights are frozen; every student's adapter and head
    are trainable, so an optimizer built afterwards sees all of them. The base must be an architecture of
    [`nanonet_hf.architectures.ARCHITECTURES`].

    Args:
        peft_model (`PeftModel`): a sequence-classification PEFT model holding adapters `student_0` … `student_{K-1}`,
            on a base cut to `plan.kept`.
        base_model_name_or_path (`str`): where the base was loaded from, for model cards.
        plan ([`LayerPlan`]): the layers each student keeps and adapts.
        adapter_type (`str`, *optional*, defaults to `"lora"`): `"bias"` for bias-only students, which train offsets
            to the biases of their adapted layers ([`StudentBiases`]).
        new_weights (`list[str]`, *optional*): weights of the frozen base that its checkpoint did not hold (drawn at
            load, e.g. a pooler), for the record.
    """

    def __init__(
        self,
        peft_model: PeftModel,
        *,
        base_model_name_or_path: str,
        plan: LayerPlan,
        adapter_type: str = "lora",
        new_weights: Sequence[str] = (),
    ):
        super().__init__()
        self.peft_model = peft_model
        self.architecture = architecture_of(self.config)
        self.base_model_name_or_path = str(base_model_name_or_path)
        self.plan = plan
        self.new_weights = list(new_weights)
        self.student_names = sorted(
            (name for name in peft_model.peft_config if name.startswith(STUDENT_PREFIX)),
            key=lambda name: int(name[len(STUDENT_PREFIX) :]),
        )
        if not self.student_names:
            raise ValueError(f"The PEFT model has no adapters named {STUDENT_PREFIX}0, {STUDENT_PREFIX}1, ...")
        if len(self.student_names) != plan.num_students:
            raise ValueError(f"The PEFT model has {len(self.student_names)} students, the layer plan {plan.num_students}.")
        for name in self.student_names:
            check_adapter_config(peft_model.peft_config[name])
        self.teacher: PreTrainedModel | None = None  # an online teacher (`attach_teacher`)
        layers = encoder_layers(peft_model.get_base_model())
        if len(layers) != len(plan.kept):
            raise ValueError(f"The base has {len(layers)} layers, but the layer plan keeps {len(plan.kept)}: {plan.kept}.")
        # bias-only students: per-student offsets of the adapted layers' biases (a submodule, so they train and save)
        self.student_biases = None
        self.adapter_type = adapter_type
        if adapter_type == "bias":
            self.student_biases = StudentBiases(layers, plan.adapted)
            trunk = min(adapted[0] for adapted in plan.adapted)
        else:
            trunk = _shared_trunk_depth(peft_model, layers, self.architecture)
        # the trunk also ends where some student leaves the stack or skips a layer
        self.shared_layers = None if trunk is None else min(trunk, plan.first_split)
        self.router = CohortRouter(
            peft_model, self.architecture, self.student_names, layers, self.shared_layers, self.student_biases,
            present=plan.present(), first_adapted=[adapted[0] for adapted in plan.adapted],
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        *,
        id2label: dict[int, str],
        num_students: int = 4,
        student_layers=None,
        adapter_layers: int | str | Sequence[int] | None = None,
        lora_config: LoraConfig | None = None,
        adapter_type: str = "lora",
        seed: int = 0,
    ) -> "StudentCohort":
        """Load the base, cut it, and add `num_students` students (LoRA, or bias-only) that start different.

        PEFT's default LoRA init is a no-op (B = 0) and `modules_to_save` copies one head, so K fresh students would
        be identical, the mutual loss exactly 0, and, with identical inputs, their gradients identical forever. Each
        student therefore gets its own seeded LoRA init and its own seeded classifier.

        Weights that the base's checkpoint lacks (the head; a pooler when it is a masked-LM or bare checkpoint) are
        drawn once from `seed`, logged, and stay in the cohort: the export writes the cohort's own frozen weights, so
        the exported student gives the logits of the student that was evaluated.

        Args:
            model_name_or_path (`str` or `os.PathLike`): a local folder or Hub id of an encoder of a supported
                architecture ([`nanonet_hf.architectures`]): a sequence-classification, masked-LM or bare checkpoint.
            id2label (`dict[int, str]`): the label space.
            num_students (`int`, *optional*, defaults to `4`): K, at least 1.
            student_layers (`int`, `str` or `list`, *optional*): the layers each student keeps: one entry per student
                (a depth N, the first N layers, or layer indices), or one entry every student takes
                ([`nanonet_hf.layer_plan`]); `[6, 3]` gives a 6-layer and a 3-layer student. Defaults to all layers.
            adapter_layers (`int` or `list[int]`, *optional*): put adapters on each student's top N layers, or on these
                indices of the cut base; the layers below the first adapted one form a trunk that runs once for all
                students. Defaults to every layer.
            lora_config (`LoraConfig`, *optional*): adapter settings shared by all students; defaults to
                `LoraConfig(r=8, lora_alpha=16)` on every linear layer of the encoder layers (the architecture table's
                targets).
            adapter_type (`str`, *optional*, defaults to `"lora"`): `"lora"`, or `"bias"` for bias-only students
                (BitFit): each trains an offset to every bias of the adapted layers, plus its head
                ([`StudentBiases`]); `lora_config` is then not used.
            seed (`int`, *optional*, defaults to `0`): weights new to the checkpoint are drawn from `seed`; student k
                is initialised from seed `seed + k`.
        """
        if num_students < 1:
            raise ValueError(f"num_students must be at least 1, got {num_students}")
        if adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type must be one of {list(ADAPTER_TYPES)}, got {adapter_type!r}")
        # an unsupported base, or a layer plan it cannot take, fails before loading any weight
        architecture, plan = plan_layers(AutoConfig.from_pretrained(model_name_or_path), student_layers, adapter_layers, num_students)
        if adapter_type == "bias":  # PEFT keeps the per-student heads; the config targets no module
            lora_config = LoraConfig(target_modules=DUMMY_TARGET_MODULES)
        lora_config = copy.deepcopy(lora_config) if lora_config is not None else LoraConfig(r=8, lora_alpha=16)
        check_adapter_config(lora_config)
        lora_config.task_type = TaskType.SEQ_CLS
        if lora_config.target_modules is None:  # PEFT has no default for several of the supported architectures
            lora_config.target_modules = list(architecture.lora_targets)
        lora_config.modules_to_save = sorted({*(lora_config.modules_to_save or []), *architecture.head})
        # each student's own LoRA layers (PEFT's layers_to_transform) where it adapts fewer than the cut base's
        configs = [lora_config] * num_students
        if adapter_type == "lora" and any(len(adapted) < len(plan.kept) for adapted in plan.adapted):
            if lora_config.layers_to_transform is not None:
                raise ValueError(
                    "Give either adapter_layers (or students of different layers, student_layers) or "
                    "LoraConfig.layers_to_transform, not both."
                )
            configs = [_on_layers(lora_config, adapted, architecture) if len(adapted) < len(plan.kept) else lora_config
                       for adapted in plan.adapted]  # fmt: skip
        base, _, new_weights = load_base(model_name_or_path, id2label=id2label, layers=plan.kept, seed=seed)
        drawn = [key for key in new_weights if not key.startswith(tuple(f"{head}." for head in architecture.head))]
        if drawn:
            logger.warning(
                "%s does not hold %d weight(s) of the classification model: %s. They were drawn from seed %d, stay "
                "frozen, and every export saves them as they are, so the exported student gives the logits of the "
                "student that was evaluated.", model_name_or_path, len(drawn), ", ".join(drawn), seed,
            )  # fmt: skip
        base.requires_grad_(False)

        names = [student_name(k) for k in range(num_students)]
        peft_model = None
        for k, name in enumerate(names):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                if peft_model is None:
                    peft_model = get_peft_model(base, configs[k], adapter_name=name)
                else:
                    peft_model.add_adapter(name, configs[k])
                _reset_classifier(peft_model, name, std=getattr(base.config, "initializer_range", 0.02))
        _check_heads(peft_model, architecture, names[0])
        if adapter_type == "lora":
            for name, config in zip(names, configs):
                _check_targets_found(peft_model, config, name)
        peft_model.set_requires_grad(names, True)
        return cls(
            peft_model, base_model_name_or_path=str(model_name_or_path), plan=plan, adapter_type=adapter_type,
            new_weights=drawn,
        )  # fmt: skip

    # ---- properties ----

    @property
    def num_students(self) -> int:
        return len(self.student_names)

    @property
    def label_names(self) -> list[str]:
        """The label space, in class-id order (`config.id2label`)."""
        return [self.config.id2label[i] for i in range(self.config.num_labels)]

    @property
    def student_layers(self) -> list[list[int]]:
        """Per student, the base's layers it keeps."""
        return [list(layers) for layers in self.plan.students]

    @property
    def depths(self) -> list[int]:
        """Per student, how many layers it keeps."""
        return self.plan.depths

    def attach_teacher(self, teacher: PreTrainedModel) -> None:
        """Make `teacher` an online teacher (PS-Net) that trains with the students: a sequence classifier on the same
        labels, in the same order, reading the same token ids. It becomes part of the trainable state (checkpoints
        hold it); export ignores it."""
        teacher_labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
        labels = self.label_names
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

    def check_views(self, views: Sequence[str]) -> None:
        """Refuse, before any training, per-student views (`parse_views` names) that this cohort cannot apply."""
        if all(view == "dropout" for view in views):
            return
        if self.shared_layers is None:
            raise ValueError("Data views need the students' adapters in the encoder layers (not on the embeddings).")
        if "shuffle" in views:
            if not self.architecture.shuffles:
                kind = "relative and absolute" if self.architecture.absolute_too else self.architecture.positions
                raise ValueError(
                    f"The shuffle view permutes position ids, but {self.architecture.name} encodes positions as "
                    f"{kind} positions that position ids do not move alone; choose other views (cutoff, dropout, "
                    "adversarial)."
                )
            if self.shared_layers != 0:
                raise ValueError(
                    "The shuffle view moves tokens at the embeddings, so the students cannot share a trunk: use it "
                    "with adapters on every layer (adapter_layers unset), or choose other views."
                )

    def position_ids(self, input_ids: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Position ids `[N, L]` in the model's own numbering for tokens that take the positions of the slots
        `order` `[N, L]` (the shuffle view; `arange(L)` gives the model's own positions)."""
        length = input_ids.shape[1]
        if self.architecture.positions == "offset":  # RoBERTa: from padding_idx + 1, padding at padding_idx
            padding_idx = self.peft_model.get_base_model().base_model.embeddings.padding_idx
            real = input_ids.ne(padding_idx).long()
            positions = real.cumsum(dim=1) * real + padding_idx
        else:
            positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
        return positions.gather(1, order)

    def release_routing(self) -> None:
        """Forget the routing of the last forward; call after `backward()` (the trainer does)."""
        self.router.release()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        views: StudentViews | None = None,
        return_embeddings: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of every student, `[batch, K, classes]`, from one forward: the shared trunk on the batch, the adapted
        layers and heads on a K× batch ([`nanonet_hf.routing`]). `views` (see [`nanonet_hf.views`]) gives each
        student its own view of the batch. With `return_embeddings`, also each student's sentence embeddings
        `[batch, K, hidden]`: the mean over the text's tokens of the encoder's last hidden states (what
        sentence-transformers bodies such as MiniLM and MPNet were trained to pool; the head keeps its own pooling),
        for embedding distillation ([`nanonet_hf.losses.embedding_loss`])."""
        batch, num_students = input_ids.shape[0], self.num_students
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        # the classification model sees K copies of the batch, student-major; its backbone takes one of them
        inputs = {key: _repeat_rows(value, num_students) for key, value in inputs.items() if value is not None}
        shuffled = views is not None and views.position_order is not None
        if views is not None:
            self.check_views(["shuffle"] if shuffled else ["cutoff"])
        if shuffled:  # per-student positions: the embeddings run on every copy (cheap; the layers see K× rows anyway)
            inputs["position_ids"] = self.position_ids(inputs["input_ids"], views.position_order.reshape(num_students * batch, -1))
        # kept after the forward, for the recompute of gradient checkpointing
        self.router.begin(batch, trunk=self.shared_layers is not None and not shuffled, views=views)
        hidden, hook = [], None
        if return_embeddings:  # the backbone's (e.g. BertModel's) last hidden states, before any head or pooler
            backbone = self.peft_model.get_base_model().base_model
            hook = backbone.register_forward_hook(lambda module, args, output: hidden.append(output[0]))
        try:
            logits = self.peft_model(**inputs).logits
        finally:
            if hook is not None:
                hook.remove()
            if not torch.is_grad_enabled():
                self.release_routing()  # no backward will follow
        logits = logits.view(num_students, batch, -1).transpose(0, 1)  # [B, K, C]
        if not return_embeddings:
            return logits
        mask = inputs.get("attention_mask")
        embeddings = mean_pool(hidden[-1], mask if mask is not None else torch.ones_like(inputs["input_ids"]))
        return logits, embeddings.view(num_students, batch, -1).transpose(0, 1)  # [B, K, H]

    @contextlib.contextmanager
    def single_student(self, name: str):
        """Make `name` the active adapter of `peft_model` for a plain forward of that student alone, restoring the
        previous one after. A student that keeps fewer layers than the cut base gets a model of its own layers: the
        layer list (and the config's per-layer settings) are cut to them inside, and restored after."""
        self.release_routing()
        previous = self.peft_model.active_adapter
        self.peft_model.base_model.set_adapter(name)
        k = self.student_names.index(name)
        if self.student_biases is not None:
            self.student_biases.rows = k
        model = self.peft_model.get_base_model()
        layers, config = encoder_layers(model), model.config
        everything = list(layers)
        settings = {key: getattr(config, key) for key in ("num_hidden_layers", *self.architecture.layer_config)}
        keep_layers(model, self.plan.positions[k])
        try:
            yield self.peft_model
        finally:
            del layers[:]
            layers.extend(everything)
            for key, value in settings.items():
                setattr(config, key, value)
            if self.student_biases is not None:
                self.student_biases.rows = None
            self.peft_model.base_model.set_adapter(previous)
            # set_adapter freezes the other adapters; every student stays trainable
            self.peft_model.set_requires_grad(self.student_names, True)

    def student_heads(self, name: str) -> dict[str, nn.Module]:
        """Student `name`'s copy of each head module (PEFT `modules_to_save`), by its path in the base model."""
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

    def num_trainable_parameters(self, per_student: bool = False) -> int | list[int]:
        """Trainable parameters of the students (an online teacher's are not counted); with `per_student`, a list with
        each student's own (its LoRA weights and head, or its bias offsets and head)."""
        students = [self.peft_model] + ([self.student_biases] if self.student_biases is not None else [])
        if not per_student:
            return sum(param.numel() for module in students for param in module.parameters() if param.requires_grad)
        counts = []
        for k, name in enumerate(self.student_names):
            own = sum(
                param.numel() for key, param in self.peft_model.named_parameters()
                if param.requires_grad and f".{name}." in f".{key}."
            )  # fmt: skip
            counts.append(own + (self.student_biases.num_parameters(k) if self.student_biases is not None else 0))
        return counts


def _repeat_rows(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """`[B, ...]` → `[copies·B, ...]`, student-major: block k is a copy of the whole batch for student k."""
    return tensor.repeat(copies, *([1] * (tensor.dim() - 1)))


def _shared_trunk_depth(peft_model: PeftModel, layers: nn.ModuleList, architecture: Architecture) -> int | None:
    """How many encoder layers sit below the first LoRA layer (the trunk every student shares), or `None` when some
    LoRA layer lives below the encoder layers (e.g. on the embeddings), so that the students share nothing and inputs
    must be repeated. LoRA on the base's own pooler (`architecture.base_pooler`) runs after the layers."""
    allowed = list(layers)
    if architecture.base_pooler is not None:
        allowed.append(peft_model.get_base_model().get_submodule(architecture.base_pooler))
    in_place = {id(module) for part in allowed for module in part.modules() if isinstance(module, LoraLayer)}
    if any(isinstance(module, LoraLayer) and id(module) not in in_place for module in peft_model.modules()):
        return None
    adapted = [index for index, layer in enumerate(layers) if any(isinstance(m, LoraLayer) for m in layer.modules())]
    return adapted[0] if adapted else len(layers)


def _student_heads(peft_model: PeftModel, adapter_name: str) -> dict[str, nn.Module]:
    """`adapter_name`'s copy of each head module (PEFT `modules_to_save`), by the module's path in the base model."""
    return {
        path: module.modules_to_save[adapter_name]
        for path, module in peft_model.get_base_model().named_modules()
        if isinstance(module, AuxiliaryTrainingWrapper) and adapter_name in getattr(module, "modules_to_save", {})
    }


def _on_layers(lora_config: LoraConfig, adapted: list[int], architecture: Architecture) -> LoraConfig:
    """`lora_config` with LoRA on the encoder layers at positions `adapted` only (PEFT's `layers_to_transform`)."""
    config = copy.deepcopy(lora_config)
    config.layers_to_transform = list(adapted)
    config.layers_pattern = architecture.layers.rsplit(".", 1)[-1]
    return config


def _check_targets_found(peft_model: PeftModel, lora_config: LoraConfig, adapter_name: str) -> None:
    """Every name in `target_modules` got LoRA somewhere. PEFT only asks that some name match, and with
    `layers_to_transform` (`adapter_layers`) it drops, without a word, a target outside the numbered encoder layers."""
    if isinstance(lora_config.target_modules, str):  # a regex: PEFT's own check
        return
    adapted = [
        name for name, module in peft_model.get_base_model().named_modules()
        if isinstance(module, LoraLayer) and any(adapter_name in getattr(module, part) for part in module.adapter_layer_names)
    ]  # fmt: skip
    missing = [t for t in sorted(lora_config.target_modules) if not any(n == t or n.endswith(f".{t}") for n in adapted)]
    if missing:
        where = (f" with adapter_layers or student_layers ({adapter_name}'s LoRA on encoder layers "
                 f"{list(lora_config.layers_to_transform)} only)"
                 if lora_config.layers_to_transform is not None else "")  # fmt: skip
        raise ValueError(f"LoRA target(s) {missing} match no module of the model{where}; check lora_target_modules.")


def _check_heads(peft_model: PeftModel, architecture: Architecture, adapter_name: str) -> None:
    """Every module of the architecture's head, and nothing else, has a copy per student (PEFT matches
    `modules_to_save` by name suffix, so a name may catch another module or none)."""
    found = sorted(_student_heads(peft_model, adapter_name))
    if found != sorted(architecture.head):
        raise ValueError(
            f"The students' head copies are {found}, but a {architecture.name} classifier's head is "
            f"{sorted(architecture.head)}: check LoraConfig.modules_to_save."
        )


def _reset_classifier(peft_model: PeftModel, adapter_name: str, *, std: float) -> None:
    """Re-initialise, from the current RNG, the Linear layers of `adapter_name`'s head that output the classes
    (normal(0, std) weights, zero biases). The rest of the head keeps what the checkpoint held, or its draw."""
    num_labels = peft_model.get_base_model().config.num_labels
    layers = [
        layer
        for head in _student_heads(peft_model, adapter_name).values()
        for layer in head.modules()
        if isinstance(layer, nn.Linear) and layer.out_features == num_labels
    ]
    if not layers:
        raise ValueError(f"No classifier layer with {num_labels} outputs was found in the head of {adapter_name}.")
    for layer in layers:
        nn.init.normal_(layer.weight, std=std)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
