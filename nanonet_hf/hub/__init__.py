"""Publishing: the student's model card, the push helper, and a Gradio Space demo."""

from ..results import learning_curves
from .card import model_card, plot_learning_curves, write_model_card
from .push import PushError, PushResult, push_student
from .space import push_space, write_space

__all__ = [
    "PushError",
    "PushResult",
    "learning_curves",
    "model_card",
    "plot_learning_curves",
    "push_space",
    "push_student",
    "write_model_card",
    "write_space",
]
