"""Bias-only students (BitFit) in the one-forward cohort: same logits and gradients as each student alone, training,
export to a plain transformers model."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nanonet_hf import MutualDistillationTrainer, StudentCohort, export_student

from .test_trainer import ID2LABEL, make_args


def build(tiny_model_dir, **kwargs):
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=3, adapter_type="bias", **kwargs)
    with torch.no_grad():  # offsets start at zero; random ones make a routing mistake visible
        for delta in cohort.student_biases.deltas.values():
            delta.normal_(std=0.5)
    return cohort


@pytest.fixture
def batch(tokenizer):
    texts = ["the team score a goal today", "spicy pasta for dinner", "new laptop chip and code", "we like this"]
    return tokenizer(texts, padding=True, return_tensors="pt")


LAYOUTS = {"all-layers": {}, "top-2": {"adapter_layers": 2}, "cut-0,2-top-1": {"student_layers": "0,2", "adapter_layers": 1}}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_forward_gives_each_students_logits_and_gradients(tiny_model_dir, batch, layout):
    cohort = build(tiny_model_dir, **LAYOUTS[layout]).train()
    labels = torch.tensor([0, 1, 2, 0])
    logits = cohort(**batch)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(3), reduction="sum").backward()
    cohort.release_routing()
    together = {name: param.grad.clone() for name, param in cohort.named_parameters() if param.requires_grad}
    cohort.zero_grad()
    for k, name in enumerate(cohort.student_names):
        with cohort.single_student(name) as model:
            alone = model(**batch).logits
            torch.nn.functional.cross_entropy(alone, labels, reduction="sum").backward()
        torch.testing.assert_close(logits[:, k], alone, atol=1e-5, rtol=0)
    for key, delta in cohort.student_biases.deltas.items():
        torch.testing.assert_close(together[f"student_biases.deltas.{key}"], delta.grad, atol=1e-5, rtol=1e-4)
    trunk = cohort.shared_layers
    assert all(index >= trunk for index, _ in cohort.student_biases.paths.values())


def test_bias_students_are_far_smaller_than_lora_ones(tiny_model_dir):
    bias = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=2, adapter_type="bias")
    base = bias.peft_model.get_base_model()
    expected = sum(
        module.bias.numel()
        for layer in base.bert.encoder.layer
        for module in layer.modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm))
    ) + sum(param.numel() for head in bias.student_heads("student_0").values() for param in head.parameters())
    assert bias.num_trainable_parameters(per_student=True) == [expected, expected]


def test_refuses_an_unknown_adapter_type(tiny_model_dir):
    with pytest.raises(ValueError, match="adapter_type"):
        StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, adapter_type="ia3")


def test_trainer_trains_bias_students_and_the_export_loads_without_peft(tiny_model_dir, tokenizer, datasets, tmp_path, batch):
    train, _ = datasets
    def bias_trainer(**overrides):
        args = make_args(tmp_path, adapter_type="bias", adapter_layers="2", **overrides)
        cohort = StudentCohort.from_pretrained(
            tiny_model_dir, id2label=ID2LABEL, num_students=3, adapter_type="bias", adapter_layers=2
        )
        return MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer)

    trainer = bias_trainer(save_strategy="steps", save_steps=3)
    cohort = trainer.model
    assert cohort.adapter_type == "bias"
    before = {name: tensor.clone() for name, tensor in cohort.trainable_state_dict().items()}
    assert any(name.startswith("student_biases.") for name in before)
    frozen = {name: p.detach().clone() for name, p in cohort.named_parameters() if not p.requires_grad}
    trainer.train()
    after = cohort.trainable_state_dict()
    assert all(not torch.equal(before[name], after[name]) for name in before)
    assert all(torch.equal(p, frozen[name]) for name, p in cohort.named_parameters() if not p.requires_grad)

    # resume reads the bias offsets back
    resumed = bias_trainer()
    resumed._load_from_checkpoint(str(tmp_path / "out" / "checkpoint-3"))
    for name, tensor in resumed.model.trainable_state_dict().items():
        torch.testing.assert_close(tensor, after[name])

    cohort.eval()
    with torch.no_grad():
        expected = cohort(**batch)
    for k in (0, 2):
        exported = export_student(cohort, k, str(tmp_path / f"run{k}"), tokenizer)
        assert exported.adapter_dir is None
        model = AutoModelForSequenceClassification.from_pretrained(exported.student_dir).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, expected[:, k], atol=1e-5, rtol=0)
