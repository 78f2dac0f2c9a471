"""The watch on the students' fit of their labeled rows: a supervised loss near ln(C) after the first quarter of the
steps (half, by default) is a collapse, said once in the log, results.json and the card; a healthy loss says nothing."""

import json
import logging
import math

from transformers import TrainerControl, TrainerState

from nanonet_hf import MutualDistillationTrainer
from nanonet_hf.fit_watch import LabelFitWatch, not_fitting

from .test_pipeline import make_args, raw_splits


def test_not_fitting_compares_with_a_uniform_guess():
    assert not_fitting(math.log(2), 2) and not_fitting(0.6, 2)
    assert not not_fitting(0.3, 2) and not not_fitting(1.0, 6)  # ln 6 = 1.79


def test_the_watch_waits_for_half_the_steps_then_warns_once(tmp_path, caplog):
    watch, args = LabelFitWatch(2), make_args(tmp_path, learning_rate=1e-3)
    state = TrainerState(max_steps=600)
    with caplog.at_level(logging.WARNING, logger="nanonet_hf.fit_watch"):
        for step, loss in ((150, 0.69), (300, 0.05), (450, 0.69), (600, 0.69)):
            state.global_step = step
            watch.on_log(args, state, TrainerControl(), logs={"loss_sup": loss})
            if step == 300:
                assert watch.message is None  # before half the steps, or fitting: nothing
    assert watch.message.startswith("At step 450 ") and "learning rate 0.001" in watch.message
    assert len([r for r in caplog.records if "collapsed" in r.message]) == 1


def test_a_collapsed_run_says_so_in_results_json_and_the_card(tiny_model_dir, toy_pool, tmp_path):
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, num_students=1, max_steps=8, logging_steps=2, max_grad_norm=0.0, learning_rate=1.0,
                     warmup_steps=0)  # a huge rate without clipping breaks the tiny model  # fmt: skip
    trainer = MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test)
    trainer.train()
    trainer.save_model()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "training has collapsed" in results["training_warning"]
    card = (tmp_path / "out" / "student" / "README.md").read_text()
    assert "Warning from training:** " + results["training_warning"] in card
