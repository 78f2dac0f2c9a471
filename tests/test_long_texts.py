"""Long texts on every architecture's tiny model: max_length is chosen from the labeled rows (the 95th percentile of
their token lengths, rounded up to a multiple of 8, capped by the base), logged with the share it cuts, used for
every training row, and written as the exported tokenizer's `model_max_length`; the card's snippets run on the
exported student with a long, multi-line example; the SetFit body and the LLM teacher read the same length."""

import logging
import math
import os
import random
import re

import numpy as np
import pytest
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer

from nanonet_hf import MutualDistillationTrainer
from nanonet_hf.base_model import max_tokens

from .conftest import CLASS_WORDS, LABELS, SHARED_WORDS
from .test_trainer import make_args
from .tiny_models import TINY, save_tiny


def long_rows(n_per_class: int, words: tuple[int, int], seed: int) -> Dataset:
    """Rows of each class whose texts run from `words[0]` to `words[1]` words (class words among shared ones), over
    several lines, with quotes."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label, name in enumerate(LABELS):
        for i in range(n_per_class):
            count = words[0] + (words[1] - words[0]) * i // max(1, n_per_class - 1)
            body = [rng.choice(CLASS_WORDS[name] if j % 3 == 0 else SHARED_WORDS) for j in range(count)]
            texts.append(" ".join(body[: count // 2]) + '\n"' + " ".join(body[count // 2 :]) + "\"'s")
            labels.append(name)
    return Dataset.from_dict({"text": texts, "label": labels})


def run(path, tmp_path, labeled, **overrides):
    args = make_args(tmp_path, num_students=2, max_steps=1, lambda_kd=0.0, speed_repeats=0, student_selection="ensemble",
                     **overrides)  # fmt: skip
    pool = long_rows(3, (2, 90), seed=5).remove_columns("label")
    return MutualDistillationTrainer(model=path, args=args, train_dataset=labeled, unlabeled_dataset=pool)


@pytest.mark.parametrize("name", sorted(TINY))
def test_max_length_is_chosen_from_the_labeled_rows_capped_by_the_base_and_exported(name, tmp_path, caplog):
    path = save_tiny(name, "classifier", str(tmp_path / name))
    tokenizer = AutoTokenizer.from_pretrained(path)
    cap = max_tokens(AutoConfig.from_pretrained(path), tokenizer)
    config = TINY[name][0]  # learned positions numbered from padding_idx + 1 = 2 lose two
    assert cap == config.max_position_embeddings - (2 if config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0)
    for words, expected in (((2, 12), None), ((2, 120), cap)):  # short texts: their 95th percentile; long: the cap
        labeled = long_rows(4, words, seed=1)
        lengths = [len(ids) for ids in tokenizer(list(labeled["text"]))["input_ids"]]
        if expected is None:
            expected = 8 * math.ceil(np.quantile(lengths, 0.95) / 8)
            assert expected < cap
        with caplog.at_level(logging.INFO, logger="nanonet_hf.data"):
            trainer = run(path, tmp_path / str(words[1]), labeled)
        assert trainer.args.max_length == expected
        cut = np.mean([length > expected for length in lengths])
        assert trainer.cut_share["labeled"] == pytest.approx(cut)
        assert f"max_length {expected} tokens (the 95th percentile" in caplog.text
        assert f"it cuts {cut:.1%} of the labeled texts" in caplog.text
        assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= expected
        assert trainer.processing_class.model_max_length == expected
        assert tokenizer.model_max_length != expected  # the caller's tokenizer is not changed
    trainer.train()
    trainer.save_model()
    exported = AutoTokenizer.from_pretrained(os.path.join(trainer.args.output_dir, "student"))
    assert exported.model_max_length == cap


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_a_max_length_beyond_the_base_is_refused_and_one_that_cuts_many_texts_warns(name, tmp_path, caplog):
    path = save_tiny(name, "classifier", str(tmp_path / name))
    cap = 64 if name == "roberta" else 66
    with pytest.raises(ValueError, match=rf"max_length={cap + 1} is more than this base takes: {cap} tokens"):
        run(path, tmp_path, long_rows(4, (2, 12), seed=1), max_length=cap + 1)
    assert not os.path.exists(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="nanonet_hf.data"):
        trainer = run(path, tmp_path, long_rows(4, (2, 120), seed=1), max_length=8)
    assert trainer.args.max_length == 8
    assert re.search(r"max_length 8 tokens \(as set\): it cuts \d+\.\d% of the labeled texts", caplog.text)
    assert "Cut texts lose their end" in caplog.text


def test_the_cards_snippets_run_on_the_exported_student_with_a_long_multiline_example(tiny_model_dir, tmp_path):
    labeled = long_rows(4, (40, 200), seed=2)  # every example is longer than the base takes, with newlines and quotes
    args = make_args(tmp_path, num_students=2, max_steps=1, lambda_kd=0.0, speed_repeats=0, student_selection="ensemble")
    trainer = MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=labeled,
                                        eval_dataset=long_rows(2, (40, 200), seed=3))  # fmt: skip
    trainer.train()
    trainer.save_model()
    card = open(os.path.join(args.output_dir, "student", "README.md")).read()
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 2 and all("truncation=True" in snippet for snippet in snippets)
    example = re.search(r"classify\((.*), truncation=True\)", snippets[0]).group(1)
    assert len(eval(example)) <= 204 and "\n" not in eval(example)  # a short sentence of a labeled text
    for snippet in snippets:
        exec(compile(snippet, "card-snippet", "exec"), {})  # loads the student folder the card names and runs


def test_the_setfit_body_and_the_llm_teacher_read_the_runs_length(tiny_model_dir, tiny_lm, tmp_path):
    """SetFit's own max_length reaches only its differentiable head: its body would read (and train on) its own
    max_seq_length; an LLM teacher keeps max_length tokens of each text."""
    labeled = long_rows(4, (2, 120), seed=1)
    setfit = MutualDistillationTrainer(model=tiny_model_dir, args=make_args(tmp_path / "setfit", teacher_type="setfit",
                                       setfit_iterations=1), train_dataset=labeled)  # fmt: skip
    assert setfit.args.max_length == 64 and setfit.teacher.settings["max_length"] == 64
    assert setfit.teacher.model.model_body.max_seq_length == 64  # trained (its logits were computed) at that length
    llm = MutualDistillationTrainer(model=tiny_model_dir, teacher_model=tiny_lm, args=make_args(
        tmp_path / "llm", teacher_type="llm", verbalizers=["pasta", "goal", "laptop"], max_length=24), train_dataset=labeled)  # fmt: skip
    assert llm.teacher.max_length == 24
