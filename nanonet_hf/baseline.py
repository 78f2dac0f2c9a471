"""The supervised-only baseline: the run's chosen student trained on the labeled rows alone, the comparison that says
what the teacher and the peers added. A step of the pipeline beside the cohort's training, with the same budget."""

import os
import time

from .data import num_labeled
from .mutual_distillation_config import MutualDistillationConfig
from .results import first_eval


def supervised_baseline(trainer) -> dict[str, float] | None:
    """Train one student on the labeled rows alone (no teacher, no peers, no views) with the layers of `trainer`'s
    chosen student ([`MutualDistillationTrainer.select_student`]) and its run's steps, batch size and learning rate,
    and return its accuracy and macro-F1 on the eval set, recorded in the trainer's card data: the comparison the card
    shows. `None` without an eval set."""
    if trainer.state.global_step == 0:
        raise RuntimeError("train_supervised_baseline() takes the cohort's step budget: call train() first.")
    cohort = trainer.accelerator.unwrap_model(trainer.model)
    t0 = time.perf_counter()
    chosen = trainer.chosen_student if trainer.chosen_student is not None else trainer.select_student()
    plan = cohort.plan
    own_adapted = [plan.positions[chosen].index(position) for position in plan.adapted[chosen]]
    settings = {
        **trainer.args.to_dict(),
        "output_dir": os.path.join(trainer.args.output_dir, "supervised_only"),
        "num_students": 1, "lambda_kd": 0.0, "lambda_mut": 0.0, "mutual_weights": None, "lambda_embedding": 0.0,
        "kd_weighting": "none",
        "student_layers": [",".join(map(str, plan.students[chosen]))],  # the chosen student's own layers
        "adapter_layers": ",".join(map(str, own_adapted)) if trainer.args.adapter_layers is not None else None,
        "student_views": None,
        "online_teacher": False, "max_steps": trainer.state.max_steps, "save_strategy": "no", "eval_strategy": "no",
        "export_formats": [],  # it is evaluated, never exported
        "push_to_hub": False, "hub_token": trainer.args.hub_token, "resume_from_checkpoint": None,
        "text_column": "text", "label_column": "label",
    }  # fmt: skip
    args = MutualDistillationConfig(**settings)
    if trainer.labeled is not None:  # raw rows: with lambda_kd 0 and no teacher_model, no teacher is made
        labeled = trainer.labeled
    else:
        labeled = trainer.train_dataset.select(range(num_labeled(trainer.train_dataset)))
    baseline = type(trainer)(
        model=cohort.base_model_name_or_path, args=args, train_dataset=labeled, processing_class=trainer.processing_class
    )
    baseline.train()
    eval_dataset = first_eval(trainer.eval_dataset)
    result = None
    if eval_dataset is not None:
        metrics = baseline.evaluate(eval_dataset)
        result = {"accuracy": metrics["eval_student_0_accuracy"], "macro_f1": metrics["eval_student_0_macro_f1"],
                  "layers": cohort.depths[chosen]}  # fmt: skip
    trainer.card_data.supervised_only = result
    trainer.card_data.wall_time_s["supervised_train_s"] = time.perf_counter() - t0
    return result
