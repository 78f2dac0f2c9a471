"""Data views: the pure functions, their effect inside the one-forward cohort, and training with them."""

import math

import pytest
import torch
from peft import LoraConfig

from nanonet_hf import MutualDistillationTrainer, StudentCohort
from nanonet_hf.views import (
    StudentViews,
    adversarial_step,
    content_tokens,
    cutoff_keep_mask,
    make_student_views,
    parse_views,
    shuffled_positions,
    student_views,
)

from .test_trainer import ID2LABEL, make_args

MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]])


def test_parse_views_cycles_and_names_bad_values():
    assert parse_views(None, 3) == ["dropout"] * 3
    assert parse_views("cutoff, shuffle", 3) == ["cutoff", "shuffle", "cutoff"]
    assert parse_views(["adversarial"], 2) == ["adversarial", "adversarial"]
    with pytest.raises(ValueError, match="'mixup'"):
        parse_views("cutoff,mixup", 2)


def test_content_tokens_leave_out_first_last_and_padding():
    content = content_tokens(MASK)
    assert content[0].tolist() == [False] + [True] * 10 + [False]
    assert content[1].tolist() == [False, True, True, True, True, False] + [False] * 6


def test_cutoff_drops_the_rate_of_content_tokens_only():
    torch.manual_seed(0)
    for _ in range(20):
        keep = cutoff_keep_mask(MASK, 0.2)
        content = content_tokens(MASK)
        dropped = ~keep
        assert not (dropped & ~content).any(), "a special token or padding was cut"
        assert dropped.sum(dim=1).tolist() == [2, 1]  # round(0.2 * 10) and at least one of 4
    assert cutoff_keep_mask(MASK, 0.0).all()


def test_shuffle_permutes_content_positions_only():
    torch.manual_seed(0)
    positions = shuffled_positions(MASK)
    content = content_tokens(MASK)
    for row in range(2):
        assert sorted(positions[row][content[row]].tolist()) == content[row].nonzero().squeeze(-1).tolist()
        assert positions[row][~content[row]].tolist() == (~content[row]).nonzero().squeeze(-1).tolist()
    assert not torch.equal(positions[0], torch.arange(12))


def test_adversarial_step_has_norm_epsilon_per_token():
    gradient = torch.randn(2, 3, 5, 8)
    gradient[0, 0, 0] = 0
    step = adversarial_step(gradient, 0.5)
    norms = step.norm(dim=-1)
    assert norms[0, 0, 0] == 0
    torch.testing.assert_close(norms[1], torch.full((3, 5), 0.5))
    assert torch.allclose(torch.nn.functional.cosine_similarity(step, gradient, dim=-1)[1], torch.ones(3, 5))


def _cohort(tiny_model_dir, **kwargs):
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)
    return StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=3, lora_config=lora, **kwargs).eval()


@pytest.fixture
def batch(tokenizer):
    texts = ["the team score a goal today", "spicy pasta for dinner", "new laptop chip and code"]
    return tokenizer(texts, padding=True, return_tensors="pt")


def _single(cohort, k, **inputs):
    with cohort.single_student(cohort.student_names[k]) as model:
        return model(**inputs).logits


@pytest.mark.parametrize("layout", [{}, {"adapter_layers": 2}])
def test_cutoff_in_one_forward_equals_that_student_alone_with_the_tokens_masked(tiny_model_dir, batch, layout):
    cohort = _cohort(tiny_model_dir, **layout)
    torch.manual_seed(1)
    views = make_student_views(["cutoff", "dropout", "cutoff"], batch["attention_mask"], cutoff_rate=0.3)
    with torch.no_grad():
        logits = cohort(**batch, views=views)
        clean = cohort(**batch)
        # the uncut student is untouched; a cut one equals its own forward with those tokens out of the mask
        torch.testing.assert_close(logits[:, 1], clean[:, 1], atol=1e-6, rtol=0)
        assert not torch.allclose(logits[:, 0], clean[:, 0], atol=1e-4)
        if not layout:  # no trunk: masking the keys at every layer is exactly a smaller attention mask
            for k in (0, 2):
                masked = batch["attention_mask"] * views.key_mask[k].long()
                torch.testing.assert_close(
                    logits[:, k], _single(cohort, k, input_ids=batch["input_ids"], attention_mask=masked), atol=1e-5, rtol=0
                )


def test_shuffle_in_one_forward_equals_that_student_alone_with_the_positions(tiny_model_dir, batch):
    cohort = _cohort(tiny_model_dir)
    torch.manual_seed(2)
    views = make_student_views(["dropout", "shuffle", "dropout"], batch["attention_mask"])
    with torch.no_grad():
        logits = cohort(**batch, views=views)
        alone = _single(cohort, 1, **batch, position_ids=cohort.position_ids(batch["input_ids"], views.position_order[1]))
        torch.testing.assert_close(logits[:, 1], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[:, 0], cohort(**batch)[:, 0], atol=1e-5, rtol=0)


def test_shuffle_refuses_a_shared_trunk(tiny_model_dir, batch):
    cohort = _cohort(tiny_model_dir, adapter_layers=1)
    views = make_student_views(["shuffle"] * 3, batch["attention_mask"])
    with pytest.raises(ValueError, match="shuffle view"):
        cohort(**batch, views=views)


def test_perturbation_reaches_only_its_student(tiny_model_dir, batch):
    cohort = _cohort(tiny_model_dir, adapter_layers=2)
    hidden = cohort.config.hidden_size
    perturbation = torch.zeros(3, *batch["input_ids"].shape, hidden)
    perturbation[2] = torch.randn(*batch["input_ids"].shape, hidden)
    with torch.no_grad():
        logits = cohort(**batch, views=StudentViews(perturbation=perturbation))
        clean = cohort(**batch)
    torch.testing.assert_close(logits[:, :2], clean[:, :2], atol=1e-6, rtol=0)
    assert not torch.allclose(logits[:, 2], clean[:, 2], atol=1e-4)


@pytest.mark.parametrize("views", ["cutoff,shuffle,adversarial", "adversarial"])
def test_training_with_views_moves_every_student_and_logs(tiny_model_dir, tokenizer, datasets, tmp_path, views):
    train, _ = datasets
    args = make_args(tmp_path, student_views=views, adapter_type="lora")
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=3, lora_config=args.lora_config())
    trainer = MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer)
    before = {name: tensor.clone() for name, tensor in cohort.trainable_state_dict().items()}
    trainer.train()
    after = cohort.trainable_state_dict()
    assert all(not torch.equal(before[name], after[name]) for name in before)
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    assert trainer.student_views == parse_views(views, 3)


def test_adversarial_step_follows_the_gradient_of_the_students_loss(tiny_model_dir, tokenizer, datasets, tmp_path):
    """The perturbation the trainer builds raises the adversarial student's loss more than a random one of the same
    size, and gives no parameter a gradient."""
    train, _ = datasets
    args = make_args(tmp_path, student_views="adversarial,dropout,dropout", adversarial_epsilon=0.5)
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=3, lora_config=args.lora_config())
    trainer = MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model_inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    cohort.train()
    torch.manual_seed(0)
    labels = inputs["labels"]
    views = student_views(trainer.student_views, cohort, model_inputs, labels, inputs["teacher_logits"],
                          temperature=args.temperature, cutoff_rate=args.cutoff_rate, adversarial_epsilon=0.5)  # fmt: skip
    assert all(param.grad is None for param in cohort.parameters())
    assert views.perturbation[1:].abs().sum() == 0
    torch.testing.assert_close(views.perturbation[0].norm(dim=-1), torch.full(model_inputs["input_ids"].shape, 0.5))

    from nanonet_hf.losses import supervised_loss

    def loss_with(perturbation):
        with torch.no_grad():
            logits = cohort(**model_inputs, views=StudentViews(perturbation=perturbation))
        return supervised_loss(logits, inputs["labels"])[0].item()

    random = adversarial_step(torch.randn_like(views.perturbation), 0.5) * views.perturbation.abs().amax(-1, keepdim=True).gt(0)
    assert loss_with(views.perturbation) > loss_with(random)
    assert loss_with(views.perturbation) > loss_with(torch.zeros_like(views.perturbation))
