"""A SetFit teacher: contrastive fine-tuning of a sentence-transformers body on pairs of the few labels, plus a
logistic-regression head (the `setfit` package). With 10 labels per class it is far stronger than a plain full
fine-tune of the same body, so it makes the better teacher for the students to distil from.

It is not a `transformers` sequence classifier (mean pooling, a scikit-learn head), so it stays in memory and is
never saved or loaded from a pickle. Its logits (log-probabilities) reach the students through
[`add_teacher_logits`], whose cache is keyed by the teacher's `fingerprint`: the inputs of its training (body,
labeled rows, settings, seed). Training is lazy, on the first `logits()` call, so a run whose logits are cached
(or a second process reading the main one's cache) never trains it.
"""

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile

import numpy as np
from datasets import Dataset
from transformers import AutoConfig, set_seed

from ..files import folder_fingerprint, folder_parameters
from .base import Teacher

logger = logging.getLogger(__name__)


class SetFitTeacher(Teacher):
    """SetFit on `labeled` (`text`, `label` ClassLabel) from the sentence-transformers body `body_name_or_path`
    (`num_iterations` pairs per labeled text: SetFit's default 20), trained when first asked for logits.

    Args:
        body_name_or_path (`str`): a sentence-transformers folder or id.
        labeled (`Dataset`): the labeled rows.
        num_iterations, num_epochs, batch_size, max_length: SetFit's training arguments.
        seed (`int`): seeds the pairs and the head.
        progress_bar (`bool`): show SetFit's progress bar while it trains.
    """

    kind = "setfit"
    learns_labeled_rows = True
    # the logistic head is under-confident on a small body: sharpened (divided by this) where it is not fitted
    default_temperature = 0.25

    def __init__(
        self,
        body_name_or_path: str,
        labeled: Dataset,
        *,
        num_iterations: int = 20,
        num_epochs: int = 1,
        batch_size: int = 16,
        max_length: int = 64,
        seed: int = 0,
        progress_bar: bool = True,
    ):
        self.body_name_or_path = body_name_or_path
        self.progress_bar = progress_bar  # SetFit's own, while it trains (not a setting: the fingerprint ignores it)
        self.labeled = labeled.select_columns(["text", "label"])
        self.label_names = list(labeled.features["label"].names)
        self.num_labels = len(self.label_names)
        self.settings = {
            "num_iterations": num_iterations, "num_epochs": num_epochs, "batch_size": batch_size,
            "max_length": max_length, "seed": seed,
        }  # fmt: skip
        self._model = None
        # embedding distillation reads the embeddings its logits were computed from instead of encoding twice
        self.remember_embeddings = False
        self._embedded: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        return f"SetFit on {self.body_name_or_path}"

    def train(self) -> None:
        self.model  # noqa: B018 (trains it)

    def keep_embeddings(self) -> None:
        self.remember_embeddings = True  # the body encodes each text once for both columns

    def size(self) -> dict:
        """The body's layers and weights (the logistic head's few are not counted)."""
        if not os.path.isdir(self.body_name_or_path):
            return super().size()
        config = AutoConfig.from_pretrained(self.body_name_or_path)
        return {"layers": config.num_hidden_layers, "parameters": folder_parameters(self.body_name_or_path)}

    def with_rows(self, labeled: Dataset) -> "SetFitTeacher":
        """The same teacher trained on other labeled rows (cross-fitting: [`TeacherEnsemble`]'s weights)."""
        return SetFitTeacher(self.body_name_or_path, labeled, **self.settings, progress_bar=self.progress_bar)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identifies the trained teacher by what it is trained from (the body's weights, the rows, the settings)."""
        rows = [list(self.labeled["text"]), list(self.labeled["label"])]
        key = json.dumps({"body": folder_fingerprint(self.body_name_or_path), "rows": rows, **self.settings}, sort_keys=True)
        return "setfit-" + hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def model(self):
        """The trained `setfit.SetFitModel` (trained now if it was not yet)."""
        if self._model is None:
            from setfit import Trainer, TrainingArguments

            set_seed(self.settings["seed"])
            model = self._body()
            logger.info("Training %s on %d labeled rows (%d pair iterations, %d tokens per text)", self.name,
                        len(self.labeled), self.settings["num_iterations"], self.settings["max_length"])  # fmt: skip
            with tempfile.TemporaryDirectory() as scratch, keep_accelerate_state():
                args = TrainingArguments(output_dir=scratch, show_progress_bar=self.progress_bar, **self.settings)
                Trainer(model=model, args=args, train_dataset=self.labeled).train()
            self._model = model
        return self._model

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """`[N, C]` log-probabilities, column c for label id c (SetFit's `predict_proba`: the body's embeddings
        through the logistic head). With `remember_embeddings`, the embeddings are kept for `embeddings()`."""
        embeddings = np.asarray(self.model.encode(list(texts), batch_size=batch_size))
        if self.remember_embeddings:
            self._embedded.update(zip(texts, embeddings))
        probabilities = np.asarray(self.model.model_head.predict_proba(embeddings))
        ordered = np.zeros((len(texts), self.num_labels))
        ordered[:, [int(c) for c in self.model.model_head.classes_]] = probabilities
        return np.log(np.clip(ordered, 1e-12, 1.0)).astype(np.float32)

    def predictor(self):
        """A function of a list of texts that labels them as this teacher does, for timing it: its `logits` once it is
        trained, else (its logits came from the cache, so it never trained in this process) the untrained body's
        encoding, which costs the same: training changes the weights, not the computation, and the logistic head's
        share is negligible. Nothing is trained for a timing."""
        if self._model is not None:
            return lambda texts: self.logits(list(texts))
        body = self._body()
        return lambda texts: body.encode(list(texts), batch_size=len(texts))

    def _body(self):
        """The untrained `setfit.SetFitModel` on the body, cutting texts at `max_length` tokens: SetFit's own
        `max_length` reaches only its differentiable head, and the body would otherwise read (and train on) up to its
        own `max_seq_length` (256 or 384 tokens)."""
        from setfit import SetFitModel

        model = SetFitModel.from_pretrained(self.body_name_or_path)
        model.model_body.max_seq_length = self.settings["max_length"]
        return model

    def embeddings(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """`[N, D]` sentence embeddings from the trained body (embedding distillation: `lambda_embedding`); those
        `logits()` already computed (with `remember_embeddings`) are not encoded again."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._embedded))
        if missing:
            self._embedded.update(zip(missing, np.asarray(self.model.encode(missing, batch_size=batch_size))))
        found = np.stack([self._embedded[text] for text in texts]) if texts else np.zeros((0, 0))
        if not self.remember_embeddings:
            self._embedded.clear()
        return found.astype(np.float32)


@contextlib.contextmanager
def keep_accelerate_state():
    """Restore accelerate's process state after SetFit trains. SetFit's trainer builds transformers
    `TrainingArguments` of its own, whose device setup clears accelerate's shared `PartialState`/`AcceleratorState`
    (`AcceleratorState._reset_state(reset_partial_state=True)`) and builds them anew from its own settings: without
    the run's `use_cpu`, several CPU processes each get a state of their own (process 0 of 1). The trainer's
    accelerator, created afterwards from that state, would then train every process alone on all the data, and
    every process would write the exports. Those shared dicts are accelerate's internals; this is the one place
    nanonet_hf touches them (tests/test_distributed.py runs a SetFit teacher under two processes)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    saved = [(state, dict(state._shared_state)) for state in (PartialState, AcceleratorState, GradientState)]
    try:
        yield
    finally:
        for state, values in saved:
            if values:  # a state that was never set up is left as SetFit made it
                state._shared_state.clear()
                state._shared_state.update(values)


def train_in_every_process(teachers) -> None:
    """Train every [`SetFitTeacher`] of `teachers` now, in this process. Under several processes every process calls
    it at the same point: SetFit's trainer is a transformers Trainer, which wraps the body in DistributedDataParallel
    and so needs every process to join its training; trained lazily inside the main process's logits computation
    (`main_process_first`), it would wait for processes that never come. The price: under several processes a
    SetFit teacher trains even when its logits are already cached."""
    for teacher in teachers:
        teacher.train()
