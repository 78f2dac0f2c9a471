"""Bias-only students (BitFit, as NanoNet trains them): each student's trainable part is an offset to every bias of
the adapted layers (the linear layers' and the LayerNorms'), plus its own head.

PEFT has no adapter that honours a per-row `adapter_names` for biases, so the offsets live in one module, a
`[K, features]` parameter per biased layer, added by forward hooks. In the cohort's forward the rows are K
student-major blocks, and block k gets offset k: all students still run in one forward. The heads stay PEFT's
(`modules_to_save`, on an adapter config that targets no module).
"""

import torch
from torch import nn


class StudentBiases(nn.Module):
    """Per-student bias offsets for the biased `nn.Linear`/`nn.LayerNorm` modules of `layers[index]` for each
    `index` in `adapted`.

    `rows` says how the hooked modules' rows map to students: `"blocks"` (K student-major blocks of `total_rows` rows
    in all, the cohort's forward), a student index (one student's rows: its plain forward, or its block inside a
    module that runs per student) or `None` (the frozen base alone). The cohort's router sets it.

    Args:
        layers (`nn.ModuleList`): the encoder layers of the (cut) base.
        adapted (`list[int]`): indices of the layers whose biases the students train.
        num_students (`int`): K.
    """

    def __init__(self, layers: nn.ModuleList, adapted: list[int], num_students: int):
        super().__init__()
        self.num_students = num_students
        self.adapted = list(adapted)
        self.rows: str | int | None = None
        self.total_rows: int | None = None
        self.deltas = nn.ParameterDict()
        self.paths: dict[str, tuple[int, str]] = {}  # key → (layer index, module path inside the layer)
        for index in self.adapted:
            for name, module in layers[index].named_modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
                    key = f"layer_{index}__{name.replace('.', '__')}"
                    self.deltas[key] = nn.Parameter(torch.zeros(num_students, module.bias.shape[0]))
                    self.paths[key] = (index, name)
                    module.register_forward_hook(self._hook(key))
        if not self.deltas:
            raise ValueError(f"The adapted layers {self.adapted} hold no Linear or LayerNorm with a bias to train.")

    def _hook(self, key: str):
        def add_offset(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self.rows is None:
                return None
            delta = self.deltas[key].to(output.dtype)
            if self.rows == "blocks":
                if output.shape[0] != self.total_rows:
                    raise RuntimeError(
                        f"A bias offset of {key} met a tensor of {output.shape[0]} rows during a cohort forward of "
                        f"{self.total_rows} rows: it is not batch-major, so it cannot be routed per student."
                    )
                blocks = output.view(self.num_students, -1, *output.shape[1:])
                shape = (self.num_students,) + (1,) * (output.dim() - 1) + (delta.shape[-1],)
                return (blocks + delta.view(shape)).view(output.shape)
            return output + delta[self.rows]

        return add_offset

    def merge_into(self, layers: nn.ModuleList, student: int) -> None:
        """Add student `student`'s offsets to the biases of `layers` (a fresh copy of the same cut base), in place."""
        with torch.no_grad():
            for key, (index, name) in self.paths.items():
                layers[index].get_submodule(name).bias += self.deltas[key][student].to(layers[index].get_submodule(name).bias)
