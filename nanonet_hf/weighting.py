"""LLKD's adaptive per-class thresholds for weighting distillation rows (see `losses.confidence_need_weights`).

`AdaptiveThresholds` holds τ_T(c) (teacher confidence) and τ_S(c) (student need: entropy / log C) and moves each by
an exponential moving average of the per-class means seen in training batches (class = the teacher's argmax). It is
a `TrainerCallback` with `ExportableState`, so Trainer saves it in every checkpoint's trainer_state.json and restores
it on resume; the trainer looks it up in its callback handler (restoring replaces the object).
"""

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .losses import class_sums, confidence_need_weights


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

    def weigh(self, logits: torch.Tensor, teacher_logits: torch.Tensor, unlabeled: torch.Tensor, *, gather, training: bool,
              id2label: dict) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        """LLKD weights `[B, K]` of a batch under the current thresholds ([`confidence_need_weights`]), and in training
        the share of rows kept, per class (`kd_kept_{label}`) and in all (`kd_kept`), after moving the thresholds by
        the batch's per-class means, summed over processes (`gather`: the accelerator's), so that every process keeps
        the same ones."""
        teacher_t, student_t = self.tensors(logits.device)
        weights, keep, confidence, need, teacher_class = confidence_need_weights(
            logits, teacher_logits, teacher_thresholds=teacher_t, student_thresholds=student_t, rows=unlabeled
        )
        kept_shares: dict[str, float] = {}
        if training:
            rows = unlabeled.nonzero().squeeze(-1)
            classes = teacher_class[rows]
            stats = torch.stack(
                [
                    class_sums(torch.ones_like(confidence[rows]), classes, self.num_classes),  # rows
                    class_sums(confidence[rows], classes, self.num_classes),
                    class_sums(need[rows].mean(-1), classes, self.num_classes),  # mean over students
                    class_sums(keep[rows].float().mean(-1), classes, self.num_classes),  # share of students
                ]
            )  # [4, C]
            counts, sums, kept = gather(stats[None]).sum(dim=0).split([1, 2, 1])
            counts, kept = counts[0], kept[0]
            for c in range(self.num_classes):
                if counts[c] > 0:
                    kept_shares[f"kd_kept_{id2label.get(c, c)}"] = (kept[c] / counts[c]).item()
            if counts.sum() > 0:
                kept_shares["kd_kept"] = (kept.sum() / counts.sum()).item()
            self.update(sums, counts)
        return weights, kept_shares

    def state(self) -> dict:
        return {
            "args": {"num_classes": self.num_classes, "momentum": self.momentum, "teacher": self.teacher, "student": self.student},
            "attributes": {},
        }
