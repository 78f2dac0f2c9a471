"""Online teacher (PS-Net): it trains on the labels with the students, at its own learning rate, and its live logits
are the distillation target."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from nanonet_hf import MutualDistillationTrainer, StudentCohort

from .test_trainer import ID2LABEL, make_args


def teacher(tiny_model_dir):
    torch.manual_seed(5)
    return AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}, ignore_mismatched_sizes=True
    )


def make(tiny_model_dir, tokenizer, train, tmp_path, teacher_model, **overrides):
    # LoRA r=2 on query/value: the tiny teacher (its 0.1M weights) stays larger than the three students' adapters
    args = make_args(tmp_path, online_teacher=True, online_teacher_learning_rate=3e-3, lora_r=2,
                     lora_target_modules=["query", "value"], **overrides)  # fmt: skip
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=3, lora_config=args.lora_config(),
                                           student_layers=args.student_layers)  # fmt: skip
    return MutualDistillationTrainer(
        model=cohort, args=args, train_dataset=train, processing_class=tokenizer, teacher_model=teacher_model
    )


@pytest.mark.parametrize("student_layers", [None, [3, 1, "0,2"]], ids=["one-depth", "mixed-depths"])
@pytest.mark.parametrize("lambda_teacher_mutual", [0.0, 0.5])
def test_online_teacher_trains_at_its_own_rate_and_is_the_target(tiny_model_dir, tokenizer, datasets, tmp_path, lambda_teacher_mutual,
                                                                 student_layers):  # fmt: skip
    train, _ = datasets
    train = train.remove_columns("teacher_logits")  # the live teacher replaces the cached logits
    model = teacher(tiny_model_dir)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = make(tiny_model_dir, tokenizer, train, tmp_path, model, lambda_teacher_mutual=lambda_teacher_mutual,
                   student_layers=student_layers)  # fmt: skip
    trainer.train()
    assert all(not torch.equal(before[name], param) for name, param in model.named_parameters())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(entry["loss_teacher"]) for entry in logs)
    assert logs[-1]["loss_kd"] > 0  # distillation from the live teacher, without a teacher_logits column
    owned = {id(param) for param in model.parameters()}
    for group in trainer.optimizer.param_groups:
        kinds = {id(param) in owned for param in group["params"]}
        assert len(kinds) == 1, "a group mixes teacher and student weights"
        assert group["initial_lr"] == (3e-3 if kinds == {True} else trainer.args.learning_rate)
    # checkpoints hold the teacher; the students' count does not
    assert any(name.startswith("teacher.") for name in trainer.model.trainable_state_dict())
    assert trainer.model.num_trainable_parameters() < sum(p.numel() for p in model.parameters())


def test_online_teacher_refusals(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    with pytest.raises(ValueError, match="needs a teacher_model"):
        make(tiny_model_dir, tokenizer, train, tmp_path, None)
    other_labels = BertForSequenceClassification(
        BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=2)
    )  # fmt: skip
    with pytest.raises(ValueError, match="predicts"):
        make(tiny_model_dir, tokenizer, train, tmp_path, other_labels)
    other_vocab = BertForSequenceClassification(
        BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                   num_labels=3, id2label=ID2LABEL)
    )  # fmt: skip
    with pytest.raises(ValueError, match="vocabulary"):
        make(tiny_model_dir, tokenizer, train, tmp_path, other_vocab)
    args = make_args(tmp_path)
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=args.num_students)
    with pytest.raises(ValueError, match="teacher_model is the online teacher only"):
        MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer, teacher_model=teacher(tiny_model_dir))
