"""How one forward runs K students: the hooks a cohort installs on its PEFT model. This is the one place where
nanonet_hf reaches into PEFT's and transformers' internals; each reach says why.

The cohort calls the classification model on K·B rows, student-major (rows k·B … (k+1)·B − 1 are the batch again,
for student k), so everything above the encoder (pooling with the attention mask, the head) sees each student's rows
as the model's own forward would. Below the first adapted layer the rows would be K identical copies, so:

1. the backbone (`model.base_model`) takes only the first B rows of its batch-major inputs, and the embeddings and
   the frozen trunk run once, without autograd;
2. at each adapted layer the hidden states and the layer inputs the architecture table names as batch-major
   (attention masks, MPNet's position bias) are repeated K times. Nothing else is: a relative-position table or a
   rotary cache stays as the model built it, whatever its shape (a batch of one text included);
3. each LoRA Linear runs PEFT's frozen base layer (its `"__base__"` rows) and adds the K students' updates as batched
   matmuls over the row blocks ([`nanonet_hf.block_lora`]); other LoRA layers (embeddings) get PEFT's own per-row
   `adapter_names`;
4. each head module (PEFT `modules_to_save`) runs student k's copy on block k, whatever the head is (PEFT's own mixed
   batch routes only a bare Linear or Embedding);
5. the submodules the table marks `per_student` (DeBERTa's attention, which projects its relative-position
   embeddings with the query and key projections) run once per student block, so that such a shared table meets
   that student's weights, as it does in the student's own forward;
6. students of different depths ([`nanonet_hf.layer_plan`]): a layer that only some students keep runs on their row
   blocks only (its batch-major inputs cut to the same blocks), and the other students' blocks pass it unchanged. A
   student's rows thus leave the stack after its last layer, and reach the head as its own model's would.

A LoRA layer or bias offset that meets any other tensor during a cohort forward raises instead of guessing.

PEFT allows `adapter_names` at inference only, and removes its hooks when the forward returns; gradient
checkpointing re-runs each layer's forward during backward, and a hook that is gone by then would route every row
through the active adapter: silently wrong gradients. So these hooks are registered once and keep the routing of the
last forward until [`CohortRouter.release`] (the trainer calls it after `backward()`).
"""

import contextlib
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn

from .architectures import Architecture
from .bias_students import StudentBiases
from .block_lora import BASE_ROWS, block_lora_update, supports_block_lora
from .views import StudentViews

BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


@dataclass
class Routing:
    """The state of one cohort forward, kept until `release` (backward may re-run the forward)."""

    rows: int  # B, the texts in the batch
    trunk: bool  # whether the backbone takes B rows and the adapted layers repeat them (False: K·B rows throughout)
    views: StudentViews | None
    block: int | None = None  # inside a `per_student` module: the student whose block is running
    present: list[int] | None = None  # inside a layer only some students keep: theirs, in block order (None: all)
    passing: torch.Tensor | None = None  # that layer's input hidden states of all K blocks, for those that skip it


class CohortRouter:
    """Installs the hooks of one forward for K students on `peft_model` and holds the routing state.

    Args:
        peft_model (`PeftModel`): the sequence-classification model with adapters `names`.
        architecture ([`Architecture`]): its table entry.
        names (`list[str]`): the students, in row-block order.
        layers (`nn.ModuleList`): the encoder layers of the (cut) base.
        first_student_layer (`int` or `None`): index of the first layer above the shared trunk (the first adapted
            layer, or the first some student skips), or `None` when some adapter sits below the encoder layers
            (nothing is shared; inputs are repeated).
        student_biases ([`StudentBiases`], *optional*): bias-only students' offsets.
        present (`list`, *optional*): per layer, the students that keep it (`None`: all), from the layer plan.
        first_adapted (`list[int]`, *optional*): per student, its first adapted layer. A student's rows need no
            backward below it (nothing of that student trains there), so above the trunk its block is cut from the
            graph where its own adapters begin.
    """

    def __init__(
        self,
        peft_model: nn.Module,
        architecture: Architecture,
        names: Sequence[str],
        layers: nn.ModuleList,
        first_student_layer: int | None,
        student_biases: StudentBiases | None = None,
        present: Sequence[list[int] | None] | None = None,
        first_adapted: Sequence[int] | None = None,
    ):
        self.names = list(names)
        self.architecture = architecture
        self.first_student_layer = first_student_layer
        self.student_biases = student_biases
        self.present = list(present) if present is not None else [None] * len(layers)
        self.first_adapted = list(first_adapted) if first_adapted is not None and first_student_layer is not None else None
        self.state: Routing | None = None
        base = peft_model.get_base_model()
        self.attn_implementation = getattr(base.config, "_attn_implementation", None)
        self.paths = {id(module): path for path, module in base.named_modules()}  # for errors
        for module in peft_model.modules():
            own = [name for name in self.names if name in getattr(module, "lora_A", {})]  # students with LoRA here
            if own and supports_block_lora(module, own):  # PEFT runs the base layer, the cohort adds the K updates
                module.register_forward_pre_hook(self._route_to_base, with_kwargs=True)
                module.register_forward_hook(self._add_block_lora, with_kwargs=True)
            elif isinstance(module, LoraLayer):
                module.register_forward_pre_hook(self._route, with_kwargs=True)
            elif isinstance(module, ModulesToSaveWrapper):
                module.register_forward_pre_hook(self._route, with_kwargs=True)
                # PEFT's wrapper forward hands routed calls to `_mixed_batch_forward`, which supports a bare Linear or
                # Embedding only; an instance attribute replaces it for this wrapper with per-block routing
                module._mixed_batch_forward = functools.partial(_head_blocks, module)
            elif isinstance(module, AuxiliaryTrainingWrapper):
                raise ValueError(f"{type(module).__name__} (e.g. trainable tokens) cannot be routed per student.")
        backbone = base.base_model
        self._backbone_signature = inspect.signature(backbone.forward)
        backbone.register_forward_pre_hook(self._enter_backbone, with_kwargs=True)
        # the layers above the trunk (every layer when nothing is shared) repeat, cut or pass student blocks
        start = first_student_layer if first_student_layer is not None else 0
        self._layer_signature = inspect.signature(layers[0].forward)
        self._hidden_name = next(iter(self._layer_signature.parameters))  # the hidden states come first
        for index in range(start, len(layers)):
            layer = layers[index]
            starting = [k for k, first in enumerate(self.first_adapted or []) if first == index and index > start]
            enter = functools.partial(self._enter_layer, first=index == start, present=self.present[index], starting=starting)
            layer.register_forward_pre_hook(enter, with_kwargs=True)
            if self.present[index] is not None:
                layer.register_forward_hook(self._leave_layer, with_kwargs=True)
            for path in architecture.per_student:
                _run_per_student(layer.get_submodule(path), self)

    @property
    def num_students(self) -> int:
        return len(self.names)

    # ---- state ----

    def begin(self, rows: int, *, trunk: bool, views: StudentViews | None) -> None:
        self.state = Routing(rows=rows, trunk=trunk, views=views)
        if self.student_biases is not None:
            self.student_biases.rows = tuple(range(self.num_students))
            self.student_biases.block_rows = rows

    def release(self) -> None:
        self.state = None
        if self.student_biases is not None:
            self.student_biases.rows = None

    def students_now(self) -> list[int]:
        """The students whose row blocks the current tensors hold, in block order."""
        present = self.state.present
        return list(range(self.num_students)) if present is None else present

    def _set_present(self, present: list[int] | None) -> None:
        self.state.present = present
        if self.student_biases is not None:
            self.student_biases.rows = tuple(self.students_now())

    @contextlib.contextmanager
    def student_block(self, k: int):
        """Inside: every routed call is student k's (a `per_student` module running block k)."""
        self.state.block = k
        if self.student_biases is not None:
            self.student_biases.rows = k
        try:
            yield
        finally:
            self.state.block = None
            if self.student_biases is not None:
                self.student_biases.rows = tuple(self.students_now())

    def adapter_names(self, module: nn.Module, rows: int) -> list[str]:
        """The student of each of `rows` rows reaching `module`: the student-major blocks of the students present
        (all K, or those keeping the current layer), or all one student's inside a `per_student` module. Anything
        else is a call the table does not route: refuse it."""
        state = self.state
        if state.block is not None:
            return [self.names[state.block]] * rows
        students = self.students_now()
        if rows == state.rows * len(students):
            return [self.names[k] for k in students for _ in range(state.rows)]
        raise RuntimeError(
            f"{self.paths.get(id(module), type(module).__name__)} got a tensor of {rows} rows during a cohort forward of {len(students)} "
            f"student block(s) × {state.rows} texts: it is not batch-major (a table shared by all rows?), so it cannot be "
            f"routed per student. The {self.architecture.name} entry of nanonet_hf/architectures.py must run the "
            "module that makes this call once per student (`per_student`), or leave it without adapters."
        )

    # ---- hooks ----

    def _route(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.state is not None:
            x = args[0] if args else next(iter(kwargs.values()))
            kwargs["adapter_names"] = self.adapter_names(module, x.shape[0])
        return args, kwargs

    def _route_to_base(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.state is not None:
            x = args[0] if args else kwargs["x"]
            self.adapter_names(module, x.shape[0])  # refuses a call it cannot route
            kwargs["adapter_names"] = [BASE_ROWS] * x.shape[0]
        return args, kwargs

    def _add_block_lora(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        if self.state is None:
            return None
        hidden = args[0] if args else kwargs["x"]
        block = self.state.block
        names = [self.names[k] for k in self.students_now()] if block is None else [self.names[block]]
        own = [index for index, name in enumerate(names) if name in module.lora_A]
        if len(own) == len(names):
            return output + block_lora_update(module, hidden, names).to(output.dtype)
        if not own:  # none of these students adapts this layer (each adapts its own top layers)
            return None
        # some of the blocks here belong to students without LoRA on this layer: only the others get an update
        inputs, outputs = hidden.chunk(len(names)), list(output.chunk(len(names)))
        updates = block_lora_update(module, torch.cat([inputs[i] for i in own]), [names[i] for i in own]).chunk(len(own))
        for i, update in zip(own, updates):
            outputs[i] = outputs[i] + update.to(output.dtype)
        return torch.cat(outputs)

    def _enter_backbone(self, module: nn.Module, args: tuple, kwargs: dict):
        """The embeddings and the trunk run once: the backbone takes the first of the K identical row blocks."""
        state = self.state
        if state is not None:
            self._set_present(None)
        if state is None or not state.trunk:
            return args, kwargs
        bound = self._backbone_signature.bind(*args, **kwargs)
        total = state.rows * self.num_students
        for name in BACKBONE_INPUTS:
            value = bound.arguments.get(name)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == total:
                bound.arguments[name] = value[: state.rows]
        return bound.args, bound.kwargs

    def _enter_layer(
        self, module: nn.Module, args: tuple, kwargs: dict, *, first: bool, present: list[int] | None, starting: list[int]
    ):
        """Pre-hook of each layer above the trunk: repeat the trunk's B rows K times (the hidden states at the first
        such layer; the batch-major inputs the model built once, at every one), then apply the views: each student's
        cut tokens leave the attention mask, its adversarial perturbation joins the hidden states entering its first
        layer. The students whose adapters begin here (`starting`) get their blocks cut from the graph below (no
        backward through layers where nothing of theirs trains), unless an adversarial perturbation needs that
        gradient. A layer that only some students keep (`present`) then gets their blocks only."""
        state = self.state
        if state is None:
            return args, kwargs
        self._set_present(None)  # set anew at every layer (a recompute of gradient checkpointing may stop mid-layer)
        detach = bool(starting) and (state.views is None or state.views.perturbation is None)
        if not state.trunk and state.views is None and present is None and not detach:
            return args, kwargs
        bound = self._layer_signature.bind(*args, **kwargs)
        arguments = bound.arguments
        hidden_name = self._hidden_name
        inputs = {hidden_name: "batch", **self.architecture.layer_inputs}
        total = state.rows * self.num_students
        if state.trunk:
            for name in inputs:
                value = arguments.get(name)
                if isinstance(value, torch.Tensor) and value.shape[0] == state.rows and state.rows != total:
                    arguments[name] = value.repeat(self.num_students, *([1] * (value.dim() - 1)))
        views = state.views
        if views is not None:
            hidden = arguments[hidden_name]
            if first and views.perturbation is not None:
                arguments[hidden_name] = hidden + views.perturbation.reshape(hidden.shape).to(hidden.dtype)
            if views.key_mask is not None:
                keep = views.key_mask.reshape(total, -1)
                for name, kind in self.architecture.layer_inputs.items():
                    if kind == "mask" and name in self._layer_signature.parameters:
                        arguments[name] = mask_keys(arguments.get(name), keep, hidden.dtype, self.attn_implementation)
        if detach:
            rows, hidden = state.rows, arguments[hidden_name]
            arguments[hidden_name] = torch.cat([
                hidden[k * rows : (k + 1) * rows].detach() if k in starting else hidden[k * rows : (k + 1) * rows]
                for k in range(self.num_students)
            ])  # fmt: skip
        if present is not None:  # only these students keep this layer: it runs on their blocks
            state.passing = arguments[hidden_name]
            for name in inputs:
                value = arguments.get(name)
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == total:
                    arguments[name] = torch.cat([value[k * state.rows : (k + 1) * state.rows] for k in present])
            self._set_present(present)
        return bound.args, bound.kwargs

    def _leave_layer(self, module: nn.Module, args: tuple, kwargs: dict, output):
        """Forward hook of a layer only some students keep: their blocks of its output, the others' blocks as they
        entered it, back in student-major order."""
        state = self.state
        if state is None or state.passing is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        present, passing, rows = self.students_now(), state.passing, state.rows
        blocks = [
            hidden[present.index(k) * rows : (present.index(k) + 1) * rows] if k in present
            else passing[k * rows : (k + 1) * rows]
            for k in range(self.num_students)
        ]  # fmt: skip
        state.passing = None
        self._set_present(None)
        merged = torch.cat(blocks)
        return (merged, *output[1:]) if isinstance(output, tuple) else merged


def mask_keys(mask: torch.Tensor | None, keep: torch.Tensor, dtype: torch.dtype, attn_implementation: str | None):
    """The attention mask a layer receives, with the keys where `keep` `[N, L]` is False masked out for every query.

    Every format the supported models build: `None` (no padding), a 2D padding mask (flash attention), a 4D boolean
    mask (True = attend), a 4D additive float mask, or a 4D integer 0/1 mask (DeBERTa); a mask with one row for the
    whole batch broadcasts to N rows."""
    if mask is None:
        if attn_implementation and "flash" in attn_implementation:
            return keep.long()
        return torch.zeros(keep.shape[0], 1, 1, keep.shape[1], dtype=dtype, device=keep.device).masked_fill(
            ~keep[:, None, None, :], torch.finfo(dtype).min
        )
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"The cutoff view cannot edit an attention mask of type {type(mask).__name__} (flex attention?); load the "
            "base with attn_implementation='sdpa' or 'eager'."
        )
    if mask.dim() == 2:
        return mask * keep.to(mask.dtype)
    keep4 = keep[:, None, None, :]
    if mask.dtype == torch.bool:
        return mask & keep4
    if mask.is_floating_point():
        return torch.where(keep4, mask, torch.finfo(mask.dtype).min)
    return mask * keep4.to(mask.dtype)


def _head_blocks(wrapper: ModulesToSaveWrapper, x: torch.Tensor, *args, adapter_names: list[str], **kwargs):
    """A head wrapper's routed call: each run of rows with one student goes through that student's copy."""
    outputs, start = [], 0
    while start < len(adapter_names):
        stop = start
        while stop < len(adapter_names) and adapter_names[stop] == adapter_names[start]:
            stop += 1
        outputs.append(wrapper.modules_to_save[adapter_names[start]](x[start:stop], *args, **kwargs))
        start = stop
    return torch.cat(outputs)


def _run_per_student(module: nn.Module, router: CohortRouter) -> None:
    """Make `module` run once per student block during a cohort forward (an instance attribute over its forward: a
    forward hook cannot replace a module's computation)."""
    original = module.forward
    signature = inspect.signature(original)
    batch_inputs = router.architecture.per_student_inputs

    def forward(*args, **kwargs):
        state = router.state
        if state is None or state.block is not None:
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        students = router.students_now()
        total, rows = state.rows * len(students), state.rows
        outputs = []
        for i, k in enumerate(students):
            block = dict(bound.arguments)
            for name in batch_inputs:
                value = block.get(name)
                if isinstance(value, torch.Tensor) and value.shape[0] == total:
                    block[name] = value[i * rows : (i + 1) * rows]
            with router.student_block(k):
                outputs.append(original(**block))
        return _concat(outputs)

    module.forward = forward


def _concat(outputs: list):
    """Join the per-block outputs of a module (a tensor, or a tuple of tensors and `None`s) along the rows."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, tuple):
        return tuple(None if parts[0] is None else _concat(list(parts)) for parts in zip(*outputs))
    raise TypeError(f"Cannot join per-student outputs of type {type(first).__name__}")
