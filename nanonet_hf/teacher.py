"""The teacher: fine-tune one on the labeled rows (or load the user's), and its logits on the training rows, cached.

The teacher tokenizes the texts itself, so it may use another vocabulary than the students (MPNet vs BERT).
"""

import logging
import os
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
from datasets import Dataset
from datasets import config as datasets_config
from datasets.fingerprint import Hasher
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .cohort import load_base
from .data import tokenize
from .files import atomic_directory, folder_fingerprint
from .inference import predict_embeddings, predict_logits
from .llm_teacher import LLMTeacher
from .speed import classifier_predictor
from .setfit_teacher import SetFitTeacher
from .teacher_ensemble import TeacherEnsemble, teacher_label_names

logger = logging.getLogger(__name__)


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
            logging_steps=10,
            report_to="none",
            seed=seed,
            disable_tqdm=True,
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
    teacher_labels = teacher_label_names(teacher_name_or_path)
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


def add_teacher_logits(
    dataset: Dataset,
    teacher: "str | SetFitTeacher | LLMTeacher | TeacherEnsemble",
    *,
    label_names: list[str],
    max_length: int = 64,
    batch_size: int = 64,
    cache_dir: str | None = None,
) -> Dataset:
    """Add a `teacher_logits` column (C floats per row) computed from the `text` column, once.

    `teacher` is a sequence classifier's folder (or Hub id), or an in-memory teacher with `logits(texts)` and a
    `fingerprint` ([`SetFitTeacher`], [`LLMTeacher`]), or a [`TeacherEnsemble`], whose members' logits are cached
    each on their own and combined. The result is an Arrow file in the datasets cache,
    keyed by the texts, the teacher (its weights' hash, or its fingerprint) and `max_length`; a later run with the
    same key reads it back. Under several processes, call it inside `TrainingArguments.main_process_first()`: the
    main process computes, the others read its file.
    """
    if isinstance(teacher, TeacherEnsemble):
        members = [add_teacher_logits(dataset, member, label_names=label_names, max_length=max_length,
                                      batch_size=batch_size, cache_dir=cache_dir)["teacher_logits"] for member in teacher.teachers]  # fmt: skip
        combined = teacher.combine([np.asarray(logits) for logits in members])
        fingerprint = Hasher.hash([dataset._fingerprint, teacher.fingerprint, max_length])
        return dataset.add_column("teacher_logits", combined.tolist(), new_fingerprint=fingerprint)
    return _add_teacher_column(dataset, teacher, "teacher_logits", predict_logits, label_names=label_names,
                               max_length=max_length, batch_size=batch_size, cache_dir=cache_dir)  # fmt: skip


def teacher_predictor(teacher: "str | SetFitTeacher | LLMTeacher | TeacherEnsemble", *, label_names: list[str],
                      max_length: int = 64) -> Callable[[list[str]], np.ndarray]:  # fmt: skip
    """A function of a list of texts that returns the teacher's logits, as the teacher would label new texts: a
    classifier folder loaded on the CPU with its tokenizer, or an in-memory teacher's own `logits` (an ensemble
    combining its members'). For timing the teacher beside the students ([`nanonet_hf.speed`])."""
    if isinstance(teacher, TeacherEnsemble):
        members = [teacher_predictor(member, label_names=label_names, max_length=max_length) for member in teacher.teachers]
        return lambda texts: teacher.combine([np.asarray(member(texts)) for member in members])
    if isinstance(teacher, (str, os.PathLike)):
        model, tokenizer = load_teacher(teacher, label_names)
        return classifier_predictor(model, tokenizer, max_length=max_length)
    if isinstance(teacher, SetFitTeacher):
        return teacher.predictor()
    return lambda texts: teacher.logits(list(texts))


def add_teacher_embeddings(
    dataset: Dataset,
    teacher: "str | SetFitTeacher",
    *,
    label_names: list[str],
    max_length: int = 64,
    batch_size: int = 64,
    cache_dir: str | None = None,
) -> Dataset:
    """Add a `teacher_embeddings` column (the teacher's sentence embedding of each row's `text`, D floats), cached as
    [`add_teacher_logits`] caches logits: a [`SetFitTeacher`]'s trained body as it encodes, or a classifier folder's
    mean-pooled last hidden states ([`predict_embeddings`]). For embedding distillation (`lambda_embedding`)."""
    if isinstance(teacher, (LLMTeacher, TeacherEnsemble)):
        raise ValueError(f"{type(teacher).__name__} has no sentence embeddings; embedding distillation "
                         "(lambda_embedding) takes a SetFit teacher or a classifier folder.")  # fmt: skip
    return _add_teacher_column(dataset, teacher, "teacher_embeddings", predict_embeddings, label_names=label_names,
                               max_length=max_length, batch_size=batch_size, cache_dir=cache_dir, key=["embeddings"])  # fmt: skip


def _add_teacher_column(dataset: Dataset, teacher, column: str, predict, *, label_names: list[str], max_length: int,
                        batch_size: int, cache_dir: str | None, key: Sequence = ()) -> Dataset:  # fmt: skip
    """`dataset` with `column` ("teacher_logits" or "teacher_embeddings") computed from its `text` column by batches:
    an in-memory teacher's method of that name ("logits", "embeddings"), or `predict(model, tokenizer, texts)` on a
    classifier folder, loaded only when the cache misses. The result is an Arrow file in the datasets cache named by
    the rows' fingerprint, the teacher (its fingerprint or its weights' hash), `max_length` and `key`: a later run
    reads it back."""
    in_memory = not isinstance(teacher, (str, os.PathLike))
    what = column.removeprefix("teacher_")
    state = {}

    def compute(texts: list[str]) -> np.ndarray:
        if in_memory:
            return getattr(teacher, what)(texts, batch_size=batch_size)
        if not state:  # load the teacher only when the cache misses
            logger.info("Computing teacher %s of %d rows with %s", what, len(dataset), teacher)
            state["model"], state["tokenizer"] = load_teacher(teacher, label_names)
        return predict(state["model"], state["tokenizer"], texts, batch_size=batch_size, max_length=max_length)

    identity = teacher.fingerprint if in_memory else folder_fingerprint(teacher)
    fingerprint = Hasher.hash([dataset._fingerprint, identity, max_length, *key])
    cache_dir = cache_dir or os.path.join(datasets_config.HF_DATASETS_CACHE, "nanonet_hf", "teacher_logits")
    os.makedirs(cache_dir, exist_ok=True)
    return dataset.map(
        lambda batch: {column: np.asarray(compute(batch["text"])).tolist()},
        batched=True,
        batch_size=1024,
        cache_file_name=os.path.join(cache_dir, f"{fingerprint}.arrow"),
        new_fingerprint=fingerprint,
        desc=f"Teacher {what}",
    )
