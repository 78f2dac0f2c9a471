"""nanonet_hf: a few labels plus unlabeled text in, a small fast text classifier out.

K students (LoRA adapters or bias offsets, each with its own head) on one frozen base learn together in one forward pass (mutual learning) from the labels and a
teacher's logits on unlabeled text; the best student is exported as a plain transformers model.
"""

from .cohort import StudentCohort
from .data import CohortCollator, FewShotData, MixedBatchSampler, load_builtin_dataset, prepare_data, training_dataset
from .export import ExportedStudent, export_student
from .generation import generate_unlabeled
from .losses import cohort_loss, confidence_need_weights, distillation_loss, linear_rampup, mutual_loss, supervised_loss
from .metrics import classification_metrics, cohort_metrics
from .mutual_distillation_config import MutualDistillationConfig
from .mutual_distillation_trainer import MutualDistillationTrainer
from .teachers import (
    ClassifierTeacher,
    LLMTeacher,
    SetFitTeacher,
    Teacher,
    TeacherEnsemble,
    add_teacher_embeddings,
    add_teacher_logits,
    train_teacher,
)
from .views import StudentViews, make_student_views
from .weighting import AdaptiveThresholds

__version__ = "0.1.0"

__all__ = [
    "AdaptiveThresholds",
    "ClassifierTeacher",
    "CohortCollator",
    "ExportedStudent",
    "FewShotData",
    "LLMTeacher",
    "MixedBatchSampler",
    "MutualDistillationConfig",
    "MutualDistillationTrainer",
    "StudentCohort",
    "SetFitTeacher",
    "StudentViews",
    "Teacher",
    "TeacherEnsemble",
    "add_teacher_embeddings",
    "add_teacher_logits",
    "classification_metrics",
    "cohort_loss",
    "cohort_metrics",
    "confidence_need_weights",
    "distillation_loss",
    "export_student",
    "generate_unlabeled",
    "linear_rampup",
    "load_builtin_dataset",
    "make_student_views",
    "mutual_loss",
    "prepare_data",
    "supervised_loss",
    "train_teacher",
    "training_dataset",
]
