"""LLKD's adaptive per-class thresholds for weighting distillation rows (see `losses.confidence_need_weights`).

`AdaptiveThresholds` holds τ_T(c) (teacher confidence) and τ_S(c) (student need: entropy / log C) and moves each by
an exponential moving average of the per-class means seen in training batches (class = the teacher's argmax). It is
a `TrainerCallback` with `ExportableState`, so Trainer saves it in every checkpoint's trainer_state.json and restores
it on resume; the trainer looks it up in its callback handler (restoring replaces the object).
"""

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class AdaptiveThresholds(TrainerCallback, ExportableState):
    """Per-class thresholds τ_T and τ_S, each moved as τ ← m·τ + (1 − m)·(batch mean of its class).

    Args:
        num_classes (`int`): C.
        momentum (`float`, *optional*, defaults to `0.9`): m; 0 follows each batch, 1 never moves.
        teacher (`list[float]`, *optional*): start values of τ_T; defaults to 1/C (a uniform teacher's confidence).
        student (`list[float]`, *optional*): start values of τ_S; defaults to 0 (every row is needed at first).
    """

    def __init__(self, num_classes: int, momentum: float = 0.9, teacher: list[float] | None = None, student: list[float] | None = None):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"threshold momentum must be in [0, 1], got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.teacher = list(teacher) if teacher is not None else [1.0 / num_classes] * num_classes
        self.student = list(student) if student is not None else [0.0] * num_classes
        if len(self.teacher) != num_classes or len(self.student) != num_classes:
            raise ValueError(f"thresholds must have {num_classes} values, got {len(self.teacher)} and {len(self.student)}")

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(τ_T [C], τ_S [C]) as float tensors."""
        return torch.tensor(self.teacher, device=device), torch.tensor(self.student, device=device)

    def update(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Move the thresholds of the classes seen in a batch.

        Args:
            sums (`torch.Tensor`): `[2, C]` per-class sums of teacher confidence (row 0) and student need (row 1).
            counts (`torch.Tensor`): `[C]` rows per class; a class with no row keeps its thresholds.
        """
        means = (sums / counts.clamp(min=1)).tolist()
        m = self.momentum
        for c, count in enumerate(counts.tolist()):
            if count > 0:
                self.teacher[c] = m * self.teacher[c] + (1 - m) * means[0][c]
                self.student[c] = m * self.student[c] + (1 - m) * means[1][c]

    def state(self) -> dict:
        return {
            "args": {"num_classes": self.num_classes, "momentum": self.momentum, "teacher": self.teacher, "student": self.student},
            "attributes": {},
        }
