"""LLKD weighting: the confidence × need weights against a formula written by hand, the EMA thresholds, and the
trainer using, logging, checkpointing and restoring them."""

import json
import math
import os

import pytest
import torch

from nanonet_hf.losses import confidence_need_weights, distillation_loss
from nanonet_hf.weighting import AdaptiveThresholds

from .test_trainer import make_args, make_trainer


def test_weights_follow_the_formula_row_by_row():
    torch.manual_seed(0)
    logits, teacher = 2 * torch.randn(12, 3, 4), 3 * torch.randn(12, 4)
    rows = torch.tensor([True] * 9 + [False] * 3)
    teacher_t, student_t = torch.tensor([0.5, 0.3, 0.6, 0.4]), torch.tensor([0.2, 0.5, 0.1, 0.3])
    result = confidence_need_weights(logits, teacher, teacher_thresholds=teacher_t, student_thresholds=student_t, rows=rows)

    for b in range(12):
        p_t = torch.softmax(teacher[b], -1)
        conf, c = p_t.max().item(), p_t.argmax().item()
        for k in range(3):
            p = torch.softmax(logits[b, k], -1)
            need = -(p * p.log()).sum().item() / math.log(4)
            kept = bool(rows[b]) and conf >= teacher_t[c] and need >= student_t[c]
            assert bool(result.keep[b, k]) == kept
            assert result.weights[b, k].item() == pytest.approx(conf * need if kept else 0.0, abs=1e-6)
    assert result.keep.any() and not result.keep.all()  # the thresholds really cut something here
    assert not result.weights.requires_grad


def test_thresholds_drop_a_class_and_per_student_weights_reach_the_loss():
    logits = torch.zeros(4, 2, 3, requires_grad=True)  # uniform students: need 1 everywhere
    teacher = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    high = torch.tensor([1.1, 0.0, 0.0])  # class 0 can never pass
    result = confidence_need_weights(logits, teacher, teacher_thresholds=high, student_thresholds=torch.zeros(3))
    assert result.keep.tolist() == [[False, False], [False, False], [True, True], [True, True]]

    # [B, K] weights: student 1 with all-zero weights gets a zero loss, student 0 the loss of its kept rows
    weights = result.weights.clone()
    weights[:, 1] = 0
    loss = distillation_loss(logits, teacher, temperature=2.0, weights=weights)
    alone = distillation_loss(logits[2:, :1], teacher[2:], temperature=2.0)
    torch.testing.assert_close(loss[0], alone[0])
    assert loss[1].item() == 0.0


def test_ema_moves_only_the_classes_seen_and_state_round_trips():
    thresholds = AdaptiveThresholds(3, momentum=0.75)
    assert thresholds.teacher == [1 / 3] * 3 and thresholds.student == [0.0] * 3
    sums = torch.tensor([[1.8, 0.0, 0.9], [0.6, 0.0, 0.5]])  # Σ confidence, Σ need per class
    counts = torch.tensor([2.0, 0.0, 1.0])
    thresholds.update(sums, counts)
    assert thresholds.teacher == pytest.approx([0.75 / 3 + 0.25 * 0.9, 1 / 3, 0.75 / 3 + 0.25 * 0.9])
    assert thresholds.student == pytest.approx([0.25 * 0.3, 0.0, 0.25 * 0.5])

    restored = AdaptiveThresholds(**thresholds.state()["args"])  # how Trainer rebuilds it on resume
    assert (restored.teacher, restored.student, restored.momentum) == (thresholds.teacher, thresholds.student, 0.75)
    with pytest.raises(ValueError, match="momentum must be in"):
        AdaptiveThresholds(3, momentum=1.5)


def _thresholds(trainer) -> AdaptiveThresholds:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AdaptiveThresholds))


def test_trainer_weights_logs_checkpoints_and_restores_the_thresholds(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, kd_weighting="confidence_need", threshold_momentum=0.5)
    full = make_trainer(tiny_model_dir, tokenizer, args, train)
    full.train()
    moved = _thresholds(full)
    assert moved.teacher != [1 / 3] * 3 and moved.student != [0.0] * 3

    logs = [entry for entry in full.state.log_history if "loss" in entry]
    assert all(0 <= entry["kd_kept"] <= 1 for entry in logs)
    assert any(key.startswith("kd_kept_") and key[8:] in ("sport", "food", "tech") for key in logs[-1])
    assert any(entry["kd_kept"] < 1 for entry in logs[1:]), "after the first update the thresholds should cut rows"

    saved = json.loads(open(os.path.join(args.output_dir, "checkpoint-4", "trainer_state.json")).read())
    assert saved["stateful_callbacks"]["AdaptiveThresholds"]["args"]["teacher"] == pytest.approx(moved.teacher)

    resumed_args = make_args(tmp_path, max_steps=4, output_dir=str(tmp_path / "b"), kd_weighting="confidence_need", threshold_momentum=0.5)
    resumed = make_trainer(tiny_model_dir, tokenizer, resumed_args, train)
    resumed.train(resume_from_checkpoint=os.path.join(args.output_dir, "checkpoint-2"))
    assert _thresholds(resumed).teacher == pytest.approx(moved.teacher, abs=1e-6)
    assert _thresholds(resumed).student == pytest.approx(moved.student, abs=1e-6)
    expected = full.model.trainable_state_dict()
    for name, tensor in resumed.model.trainable_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5)


def test_no_weighting_keeps_the_old_loss(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, max_steps=1), train)
    assert not any(isinstance(cb, AdaptiveThresholds) for cb in trainer.callback_handler.callbacks)
    trainer.train()
    assert "kd_kept" not in trainer.state.log_history[0]
