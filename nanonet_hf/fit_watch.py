"""Watch that the students fit their own labeled rows: a cohort whose supervised loss stays near that of a uniform
guess, ln(C), has collapsed (every text gets about the same prediction) and will export a majority-class model.

A collapse shows in the training loss long before a test score does (the case that was measured is in
docs/accuracy.md, "Distilling the teacher's embeddings"), so the trainer says so while it trains.
"""

import logging
import math

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def not_fitting(supervised_loss: float, num_labels: int, *, ratio: float = 0.8) -> bool:
    """Whether a mean supervised loss is within `ratio` of a uniform guess's, ln(C)."""
    return supervised_loss >= ratio * math.log(num_labels)


class LabelFitWatch(TrainerCallback):
    """Warns once when, after `after` (a share) of the training steps, the logged supervised loss (`loss_sup`, the mean over
    the logging window) still says the students are not fitting the labeled rows; keeps the message in `message`
    for `results.json`.

    Args:
        num_labels (`int`): the number of classes C.
        after (`float`): the share of `max_steps` before which no judgement is made (warm-up, ramp-up).
    """

    def __init__(self, num_labels: int, *, after: float = 0.5):
        self.num_labels, self.after = num_labels, after
        self.message: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss_sup")
        if self.message or loss is None or state.global_step < self.after * state.max_steps:
            return
        if not_fitting(loss, self.num_labels):
            self.message = (
                f"At step {state.global_step} the students' supervised loss on their labeled rows is {loss:.3f}, "
                f"near a uniform guess's ln({self.num_labels}) = {math.log(self.num_labels):.3f}: training has "
                f"collapsed (learning rate {args.learning_rate:g}). Lower the learning rate (e.g. by 3x), or let the teacher's "
                "sharpening be fitted on the labeled rows (teacher_temperature='fit'), and train again."
            )
            logger.warning(self.message)
