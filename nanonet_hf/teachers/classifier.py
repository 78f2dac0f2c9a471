"""A transformers sequence classifier as the teacher: the user's (a folder or Hub id with the data's labels), or a full
fine-tune of the base on the labeled rows (`train_teacher`).

It tokenizes the texts itself, so it may use another vocabulary than the students (MPNet vs BERT), and it is loaded
only when its logits are asked for and not cached.
"""

import logging
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)

from ..base_model import load_base
from ..data import tokenize
from ..files import atomic_directory, folder_fingerprint, folder_parameters
from ..inference import predict_embeddings, predict_logits
from ..speed import classifier_predictor
from .base import Teacher

logger = logging.getLogger(__name__)


class ClassifierTeacher(Teacher):
    """A sequence classifier's folder (or Hub id) as a teacher.

    Args:
        name_or_path (`str`): the classifier; its `config.id2label` is its label space.
        max_length (`int`, *optional*, defaults to `64`): tokens per text it reads.
    """

    kind = "fine_tune"

    def __init__(self, name_or_path: "str | os.PathLike", *, max_length: int = 64):
        self.path = str(name_or_path)
        self.max_length = max_length
        config = AutoConfig.from_pretrained(self.path)
        self.label_names = [config.id2label[i] for i in range(config.num_labels)]
        self._loaded = None

    @property
    def name(self) -> str:
        return self.path

    @property
    def fingerprint(self) -> str:
        return folder_fingerprint(self.path)

    def _model(self):
        if self._loaded is None:  # loaded only when its predictions are not cached
            logger.info("Loading the teacher %s", self.path)
            self._loaded = load_teacher(self.path, self.label_names)
        return self._loaded

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        model, tokenizer = self._model()
        return predict_logits(model, tokenizer, list(texts), batch_size=batch_size, max_length=self.max_length)

    def embeddings(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Its mean-pooled last hidden states ([`predict_embeddings`])."""
        model, tokenizer = self._model()
        return predict_embeddings(model, tokenizer, list(texts), batch_size=batch_size, max_length=self.max_length)

    def predictor(self):
        return classifier_predictor(*self._model(), max_length=self.max_length)

    def size(self) -> dict:
        if not os.path.isdir(self.path):
            return super().size()
        return {"layers": AutoConfig.from_pretrained(self.path).num_hidden_layers, "parameters": folder_parameters(self.path)}


def as_teacher(teacher: "str | os.PathLike | Teacher", *, max_length: int = 64) -> Teacher:
    """A [`Teacher`] as it is; a classifier's folder or Hub id as a [`ClassifierTeacher`]."""
    return teacher if isinstance(teacher, Teacher) else ClassifierTeacher(teacher, max_length=max_length)


def train_teacher(
    model_name_or_path: str,
    labeled: Dataset,
    output_dir: str,
    *,
    num_train_epochs: float = 20,
    learning_rate: float = 3e-4,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
) -> str:
    """Fine-tune the full-depth `model_name_or_path` on `labeled` (`text`, `label`) with a plain Trainer.

    Saves a sequence classifier and its tokenizer to `output_dir` (atomically) and returns that path.
    """
    id2label = dict(enumerate(labeled.features["label"].names))
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    tokenizer.model_max_length = max_length  # the length it was trained at, as saved below
    set_seed(seed)  # the new head's init, not whatever ran before, decides the teacher: few labels make it matter
    model = load_base(model_name_or_path, id2label=id2label, seed=seed).model
    train = tokenize(labeled.rename_column("label", "labels"), tokenizer, max_length).remove_columns("text")
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,  # logs only; the model is saved below
            num_train_epochs=num_train_epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            warmup_steps=0.1,
            weight_decay=0.01,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            seed=seed,
            disable_tqdm=False,  # the teacher's training shows its own progress bar
        )
        # under `accelerate launch` every process trains its share of each batch (DDP); the main one saves
        trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
        if trainer.is_world_process_zero():
            with atomic_directory(output_dir) as tmp:
                trainer.accelerator.unwrap_model(model).save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        trainer.accelerator.wait_for_everyone()
    return output_dir


def check_teacher(teacher_name_or_path: str, label_names: list[str]) -> PreTrainedTokenizerBase:
    """Raise unless the teacher's config predicts exactly `label_names`, in order, and its own tokenizer fits its
    embeddings (reads the config and tokenizer only); return that tokenizer. The teacher may use another vocabulary
    than the students: it tokenizes the texts itself."""
    config = AutoConfig.from_pretrained(teacher_name_or_path)
    teacher_labels = [config.id2label[i] for i in range(config.num_labels)]
    if teacher_labels != list(label_names):
        raise ValueError(
            f"The teacher {teacher_name_or_path} predicts labels {teacher_labels}, but the data's labels are "
            f"{list(label_names)}. A teacher must share the label space, in the same order (config.id2label)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(teacher_name_or_path)
    except Exception as error:
        raise ValueError(f"The teacher {teacher_name_or_path} has no loadable tokenizer: {error}") from error
    if len(tokenizer) <= len(tokenizer.all_special_tokens):  # transformers builds an empty one from a bare config
        raise ValueError(
            f"The teacher {teacher_name_or_path} has no tokenizer files (its tokenizer holds only special tokens). "
            "Save the tokenizer it was trained with beside it (`tokenizer.save_pretrained`)."
        )
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"The teacher {teacher_name_or_path}'s tokenizer has {len(tokenizer)} tokens but its model embeds only "
            f"{vocab_size} (config.vocab_size): the tokenizer belongs to another model."
        )
    return tokenizer


def load_teacher(teacher_name_or_path: str, label_names: list[str]):
    """Load a teacher classifier (safetensors only) and its tokenizer, after `check_teacher`."""
    tokenizer = check_teacher(teacher_name_or_path, label_names)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_name_or_path, use_safetensors=True)
    return model, tokenizer
