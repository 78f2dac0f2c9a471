"""Bias-only students (BitFit, as NanoNet trains them): each student's trainable part is an offset to every bias of
its adapted layers (the linear layers' and the LayerNorms'), plus its own head.

PEFT has no adapter that honours a per-row `adapter_names` for biases, so the offsets live in one module, a
`[K, features]` parameter per biased layer, added by forward hooks. In the cohort's forward the rows are student-major
blocks, and block k gets offset k: all students still run in one forward. A layer that only some students keep sees
only their blocks ([`nanonet_hf.routing`]). The heads stay PEFT's (`modules_to_save`, on an adapter config that
targets no module).
"""

import torch
from torch import nn


class StudentBiases(nn.Module):
    """Per-student bias offsets for the biased `nn.Linear`/`nn.LayerNorm` modules of the layers each student adapts.

    `rows` says how the hooked modules' rows map to students: a tuple of student indices (the student-major blocks of
    `block_rows` rows each that a cohort forward passes there), one student index (that student's rows: its plain
    forward, or its block inside a module that runs per student) or `None` (the frozen base alone). The cohort's
    router sets it.

    Args:
        layers (`nn.ModuleList`): the encoder layers of the (cut) base.
        adapted (`list[list[int]]`): per student, the positions of the layers whose biases it trains. A layer some
            students do not adapt has offsets for all students; theirs stay zero (they get no gradient) and are not
            counted as their parameters.
    """

    def __init__(self, layers: nn.ModuleList, adapted: list[list[int]]):
        super().__init__()
        self.num_students = len(adapted)
        self.adapted = [list(positions) for positions in adapted]
        self.rows: tuple[int, ...] | int | None = None
        self.block_rows: int | None = None
        self.deltas = nn.ParameterDict()
        self.paths: dict[str, tuple[int, str]] = {}  # key → (layer index, module path inside the layer)
        self.trains: dict[str, torch.Tensor] = {}  # key → [K] bool, whether student k adapts that layer
        for index in sorted(set().union(*map(set, self.adapted))):
            students = torch.tensor([index in positions for positions in self.adapted])
            for name, module in layers[index].named_modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
                    key = f"layer_{index}__{name.replace('.', '__')}"
                    self.deltas[key] = nn.Parameter(torch.zeros(self.num_students, module.bias.shape[0]))
                    self.paths[key] = (index, name)
                    self.trains[key] = students
                    module.register_forward_hook(self._hook(key))
        if not self.deltas:
            raise ValueError(f"The adapted layers {sorted(set().union(*map(set, self.adapted)))} hold no Linear or "
                             "LayerNorm with a bias to train.")  # fmt: skip

    def _hook(self, key: str):
        def add_offset(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self.rows is None:
                return None
            delta = self.deltas[key] * self.trains[key].to(output.device, output.dtype)[:, None]  # [K, F]
            delta = delta.to(output.dtype)
            if isinstance(self.rows, tuple):
                blocks = len(self.rows)
                if output.shape[0] != self.block_rows * blocks:
                    raise RuntimeError(
                        f"A bias offset of {key} met a tensor of {output.shape[0]} rows during a cohort forward of "
                        f"{blocks} student blocks × {self.block_rows} rows: it is not batch-major, so it cannot be "
                        "routed per student."
                    )
                rows = output.view(blocks, -1, *output.shape[1:])
                shape = (blocks,) + (1,) * (output.dim() - 1) + (delta.shape[-1],)
                return (rows + delta[list(self.rows)].view(shape)).view(output.shape)
            return output + delta[self.rows]

        return add_offset

    def num_parameters(self, student: int) -> int:
        """The offsets student `student` trains."""
        return sum(self.deltas[key].shape[-1] for key, trains in self.trains.items() if trains[student])

    def merge_into(self, layers: nn.ModuleList, student: int, positions: list[int] | None = None) -> None:
        """Add student `student`'s offsets to the biases of `layers`, in place: a fresh copy of the same cut base, or,
        with `positions` (the cut base's position of each of `layers`), of the student's own layers."""
        with torch.no_grad():
            for key, (index, name) in self.paths.items():
                if not self.trains[key][student]:
                    continue
                target = layers[index if positions is None else positions.index(index)].get_submodule(name)
                target.bias += self.deltas[key][student].to(target.bias)
