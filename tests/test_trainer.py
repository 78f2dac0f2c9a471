import math
import os

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForSequenceClassification

from nanonet_hf import MutualDistillationConfig, MutualDistillationTrainer, StudentCohort
from nanonet_hf.data import CohortCollator, sample_per_class, tokenize, training_dataset
from nanonet_hf.files import last_complete_checkpoint
from nanonet_hf.losses import IGNORE_INDEX

from .conftest import LABELS

ID2LABEL = dict(enumerate(LABELS))


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        num_students=3,
        learning_rate=1e-2,  # high, so every trained tensor visibly moves in a few steps
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        student_layers=None,  # the tiny models have 3 layers: every student keeps them all (the default is [6, 3])
        setfit_body=None,  # a SetFit teacher on the tiny base, not the default MPNet body
        allow_weak_teacher=True,  # a random tiny model is no teacher; the refusal has its own tests (test_bad_inputs)
    )
    values.update(overrides)
    return MutualDistillationConfig(**values)


def make_trainer(tiny_model_dir, tokenizer, args, train, evaluation=None):
    cohort = StudentCohort.from_pretrained(
        tiny_model_dir, id2label=ID2LABEL, num_students=args.num_students, lora_config=args.lora_config(), seed=args.seed
    )
    return MutualDistillationTrainer(
        model=cohort, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer
    )


def test_training_moves_every_student_logs_every_term_and_students_diverge(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, gradient_accumulation_steps=2), train)
    before = {name: t.clone() for name, t in trainer.model.trainable_state_dict().items()}
    frozen = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    after = trainer.model.trainable_state_dict()
    assert all(not torch.equal(before[name], after[name]) for name in before)
    assert all(torch.equal(p, frozen[name]) for name, p in trainer.model.named_parameters() if not p.requires_grad)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for key in ("loss_sup", "loss_kd", "loss_mut", "mutual_weight", "student_0_loss", "student_2_loss"):
        assert all(math.isfinite(entry[key]) for entry in logs), key
    assert logs[-1]["loss_kd"] > 0 and logs[-1]["loss_mut"] > 0
    # students differ: their LoRA B matrices (all zero at PEFT's init) and their heads moved apart
    b0, b1 = (after[n] for n in after if "layer.0.attention.self.query.lora_B" in n and n.endswith(("student_0.weight", "student_1.weight")))
    assert not torch.allclose(b0, b1)


def test_activation_checkpointing_through_trainer_args(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    plain = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, max_steps=2), train)
    plain.train()
    args = make_args(tmp_path, max_steps=2, activation_checkpointing=True, output_dir=str(tmp_path / "ckpt"))
    checkpointed = make_trainer(tiny_model_dir, tokenizer, args, train)
    checkpointed.train()
    assert checkpointed.model.is_activation_checkpointing
    expected = plain.model.trainable_state_dict()
    for name, tensor in checkpointed.model.trainable_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5)


def test_gradient_accumulation_matches_one_large_batch(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    collator = CohortCollator(tokenizer)
    # a batch of 8 whose halves each hold 1 labeled + 3 unlabeled rows, as the sampler composes them
    rows = [train[i] for i in (0, 12, 13, 14, 1, 15, 16, 17)]
    assert [row["labels"] != IGNORE_INDEX for row in rows].count(True) == 2

    def grads(accumulation):
        trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, gradient_accumulation_steps=accumulation), train)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = accumulation
        trainer.state.max_steps = 10
        size = len(rows) // accumulation
        for start in range(0, len(rows), size):
            trainer.training_step(trainer.model, collator(rows[start : start + size]))
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    one, two = grads(1), grads(2)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-4)


def test_evaluation_scores_each_student_the_ensemble_and_names_the_best(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, evaluation = datasets
    trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path), train, evaluation)
    metrics = trainer.evaluate()
    for key in ("student_0_accuracy", "student_2_macro_f1", "ensemble_accuracy", "best_student", "best_student_accuracy"):
        assert f"eval_{key}" in metrics
    best = int(metrics["eval_best_student"])
    assert metrics["eval_best_student_accuracy"] == max(metrics[f"eval_student_{k}_accuracy"] for k in range(3))
    assert metrics[f"eval_student_{best}_accuracy"] == metrics["eval_best_student_accuracy"]
    assert math.isfinite(metrics["eval_loss"])
    logged = trainer.state.log_history[-1]  # the loss terms are logged with the eval_ prefix
    assert {"eval_loss_sup", "eval_loss_mut", "eval_student_1_loss"} <= set(logged)


def test_resume_from_checkpoint_reaches_the_same_weights(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    full = make_trainer(tiny_model_dir, tokenizer, args, train)
    full.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-2")
    assert os.path.isfile(os.path.join(checkpoint, "model.safetensors"))

    resumed = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, max_steps=4, output_dir=str(tmp_path / "b")), train)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 4
    expected = full.model.trainable_state_dict()
    for name, tensor in resumed.model.trainable_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5)


def test_resume_refuses_a_checkpoint_of_another_cohort(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    make_trainer(tiny_model_dir, tokenizer, args, train).train()
    other = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, max_steps=4, num_students=2), train)
    with pytest.raises(ValueError, match="does not match this cohort"):
        other.train(resume_from_checkpoint=os.path.join(args.output_dir, "checkpoint-2"))


def test_labeled_rows_only_without_teacher_trains(tiny_model_dir, tokenizer, toy_pool, tmp_path):
    labeled, _ = sample_per_class(toy_pool, 4, seed=0)
    empty = toy_pool.select([]).remove_columns("label")
    train = tokenize(training_dataset(labeled, empty), tokenizer, 16)
    trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path), train)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(entry["loss"]) and entry["loss_kd"] == 0 for entry in logs)


def test_trainer_builds_the_cohort_from_a_model_path(tiny_model_dir, datasets, tmp_path):
    train, evaluation = datasets
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=make_args(tmp_path, num_students=2, max_steps=1), train_dataset=train, eval_dataset=evaluation
    )
    assert trainer.model.num_students == 2 and trainer.model.config.id2label == ID2LABEL
    trainer.train()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_students": 0}, "num_students must be at least 1"),
        ({"adapter_type": "ia3"}, "adapter_type='ia3' cannot train a cohort"),
        ({"mutual_loss": "cosine"}, "mutual_loss"),
        ({"student_layers": "two"}, "student_layers"),
        ({"teacher_temperature": 0}, "teacher_temperature must be > 0"),
        ({"mutual_weights": [1.0, 0.5]}, r"mutual_weights=\[1.0, 0.5\] must give one weight >= 0 per student \(num_students=3\)"),
        ({"mutual_weights": [1.0, -1.0, 1.0]}, "mutual_weights"),
        ({"speed_repeats": -1}, "speed_repeats must be >= 0"),
    ],
)
def test_config_refuses_bad_values(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_load_best_model_at_end_restores_the_best_checkpoint(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, evaluation = datasets
    args = make_args(
        tmp_path,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="score",
    )
    scores = iter([1.0, 0.0])  # the first evaluation (step 2) is the best, so loading it rewinds the weights
    trainer = make_trainer(tiny_model_dir, tokenizer, args, train, evaluation)
    trainer.compute_metrics = lambda prediction: {"score": next(scores)}
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")

    def saved(step):
        return safetensors.torch.load_file(os.path.join(args.output_dir, f"checkpoint-{step}", "model.safetensors"))

    best, last, now = saved(2), saved(4), trainer.model.trainable_state_dict()
    assert all(torch.equal(tensor, best[name]) for name, tensor in now.items())
    assert any(not torch.equal(tensor, last[name]) for name, tensor in now.items())


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_training_naming_step_student_and_term(tiny_model_dir, tokenizer, datasets, tmp_path, bad_value):
    train, _ = datasets
    logits = list(train["teacher_logits"])
    broken = 30  # a teacher logit broken on one unlabeled row, which a later batch brings
    logits[broken] = [bad_value, 0.0, 0.0]
    train = train.remove_columns("teacher_logits").add_column("teacher_logits", logits)
    args = make_args(tmp_path, max_steps=20, save_strategy="steps", save_steps=1)
    trainer = make_trainer(tiny_model_dir, tokenizer, args, train)
    batches = [batch for batch in trainer.get_train_dataloader()]
    step = next(i for i, batch in enumerate(batches) if not torch.isfinite(batch["teacher_logits"]).all()) + 1
    with pytest.raises(FloatingPointError, match=rf"Non-finite loss at step {step}: the distillation loss of student 0 is nan"):
        trainer.train()
    assert trainer.state.global_step == step - 1
    weights = trainer.model.trainable_state_dict()
    assert all(torch.isfinite(tensor).all() for tensor in weights.values()), "a NaN reached the weights"
    for checkpoint in os.listdir(args.output_dir):  # every checkpoint written before the fault is clean
        saved = safetensors.torch.load_file(os.path.join(args.output_dir, checkpoint, "model.safetensors"))
        assert all(torch.isfinite(tensor).all() for tensor in saved.values()), checkpoint


def test_last_complete_checkpoint_skips_folders_without_trainer_state(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-8.partial").mkdir()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None


def test_group_by_length_hands_the_sampler_token_counts(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    args = make_args(tmp_path, train_sampling_strategy="group_by_length")
    trainer = make_trainer(tiny_model_dir, tokenizer, args, train)
    assert trainer._get_train_sampler().lengths.tolist() == [len(ids) for ids in train["input_ids"]]
    trainer.train()
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    # rows without input_ids are raw rows, tokenized by the trainer: these lack the raw label column, named up front
    with pytest.raises(ValueError, match=r"train_dataset has no column 'label' \(set label_column\); its columns are"):
        make_trainer(tiny_model_dir, tokenizer, args, train.remove_columns("input_ids"))


@pytest.mark.parametrize("extra", [{}, {"online_teacher": True, "student_views": ["cutoff", "adversarial", "dropout"]}])
def test_bf16_runs_the_students_in_bfloat16_and_keeps_their_weights_float32(tiny_model_dir, tokenizer, datasets, tmp_path, extra):
    train, _ = datasets
    args = make_args(tmp_path, bf16=True, **extra)
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=3, lora_config=args.lora_config())
    teacher = None
    if extra:  # an online teacher: it runs outside the prepared model's forward, under the trainer's autocast
        teacher = AutoModelForSequenceClassification.from_pretrained(
            tiny_model_dir, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}, ignore_mismatched_sizes=True
        )
    trainer = MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer, teacher_model=teacher)
    lora = next(module for module in trainer.model.modules() if hasattr(module, "lora_A"))
    dtypes = set()
    lora.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    if teacher is not None:
        teacher.classifier.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    before = {name: t.clone() for name, t in trainer.model.trainable_state_dict().items()}
    trainer.train()
    assert dtypes == {torch.bfloat16}
    after = trainer.model.trainable_state_dict()
    assert all(t.dtype == torch.float32 and not torch.equal(before[name], t) for name, t in after.items())
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)


def test_sampling_strategies_that_cannot_mix_batches_are_refused(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    with pytest.raises(ValueError, match="train_sampling_strategy='sequential' is not supported"):
        make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, train_sampling_strategy="sequential"), train)


def test_teacher_temperature_divides_the_teacher_logits_before_distillation(tiny_model_dir, tokenizer, datasets, tmp_path):
    train, _ = datasets
    doubled = train.map(lambda row: {"teacher_logits": [2 * value for value in row["teacher_logits"]]})
    losses = {}
    for name, data, teacher_temperature in (("doubled", doubled, 1.0), ("halved", train, 0.5), ("as is", train, 1.0)):
        trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, teacher_temperature=teacher_temperature), data)
        batch = next(iter(trainer.get_train_dataloader()))  # the same seeded batch each time
        trainer.model.eval()  # no dropout: the three losses differ by their targets only
        with torch.no_grad():
            losses[name] = trainer.compute_loss(trainer.model, batch).item()
    assert losses["halved"] == pytest.approx(losses["doubled"], rel=1e-5)
    assert losses["halved"] != pytest.approx(losses["as is"], rel=1e-3)
