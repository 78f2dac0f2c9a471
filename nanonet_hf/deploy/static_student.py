"""A static student (`student_static/`): a Model2Vec model distilled from the exported student's vocabulary, its
classifier trained on the teacher's soft labels over the unlabeled pool plus the labeled rows. No transformer runs
at inference: a text's vector is the mean of its tokens' vectors, then a small MLP; it loads with
`model2vec.inference.StaticModelPipeline.from_pretrained`.

1. Vocabulary: `model2vec.distill.distill_from_model` runs the student's encoder on each token of its vocabulary
   and keeps the mean output (PCA to `PCA_DIMS`), as Model2Vec distils any sentence encoder; its Zipf weighting of
   the tokens is tried on and off (`SIF_CHOICES`), the held-out rows choosing.
2. Classifier: `model2vec.train.StaticModelForClassification` (the token vectors, fine-tuned, and an MLP head), trained
   here on soft targets: Model2Vec's own `fit` takes hard labels only, and the pool's labels are the teacher's
   probabilities. The rows are the labeled ones (one-hot) and the pool (the teacher's probabilities at the
   temperature the students learned from). A tenth of the pool is held out; training stops when the agreement with
   the teacher's class there stops improving (`PATIENCE` epochs), and keeps the best epoch: settings are chosen on
   unlabeled rows, never on test labels.
"""

import copy
import logging

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

logger = logging.getLogger(__name__)

STATIC_DIR = "student_static"
PCA_DIMS = 256
HELD_OUT = 0.1
MAX_EPOCHS = 30
PATIENCE = 3
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
# Model2Vec's Zipf weighting of the token vectors (its default coefficient), and none: the one that agrees more with
# the teacher on the held-out rows is kept. On TREC-6 none won (0.805 against 0.788): the weighting shrinks frequent
# tokens, and there the question words (who, where, how many) carry the class.
SIF_CHOICES = (1e-4, None)


def train_static_student(
    student_dir: str,
    texts: list[str],
    targets: np.ndarray,
    label_names: list[str],
    *,
    held_out: np.ndarray,
    max_length: int | None,
    seed: int = 0,
):
    """A `StaticModelPipeline` distilled from the student in `student_dir` and trained on `texts` with soft `targets`
    `[N, C]` (rows summing to one); `held_out` (bool `[N]`) marks the rows that choose the epoch and the token
    weighting. Returns the pipeline and a record of the training (the weighting, epochs, held-out agreement)."""
    from model2vec.distill import distill_from_model
    from model2vec.distill.inference import compute_weights

    student = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    pca_dims = min(PCA_DIMS, student.config.hidden_size)
    static = distill_from_model(student.base_model, tokenizer, pca_dims=pca_dims, sif_coefficient=None, quantize_to="float32")
    unweighted = static.embedding.copy()
    tried = []
    for sif in SIF_CHOICES:
        # Model2Vec weights each token's vector after the PCA by its Zipf rank (`compute_weights`, which its
        # `distill_from_model` applies); distilled once unweighted, the weighting is applied here
        static.embedding = (unweighted * compute_weights(len(unweighted), sif_coefficient=sif)[:, None]).astype(np.float32)
        classifier, record = _fit(static, texts, targets, label_names, held_out=held_out, max_length=max_length, seed=seed)
        tried.append((record["held_out_agreement_with_teacher"], sif, classifier, record))
    agreement, sif, classifier, record = max(tried, key=lambda item: item[0])  # the first on a tie
    record = {"sif_coefficient": sif, **record,
              "held_out_agreement_by_sif": {str(choice): score for score, choice, _, _ in tried}}  # fmt: skip
    logger.info("Static student: %s", record)
    return classifier.to_pipeline(), record


def _fit(static, texts: list[str], targets: np.ndarray, label_names: list[str], *, held_out: np.ndarray, max_length, seed: int):
    """Model2Vec's classifier (its token vectors and an MLP head) on `static`, trained on the soft `targets`; the epoch
    with the best agreement with the targets' class on the `held_out` rows is kept."""
    from model2vec.train import StaticModelForClassification

    torch.manual_seed(seed)
    classifier = StaticModelForClassification.from_static_model(model=static, out_dim=len(label_names), max_length=max_length)
    classifier.classes_ = list(label_names)  # the pipeline's classes, in the students' label order
    targets = torch.as_tensor(targets, dtype=torch.float32)
    train = np.flatnonzero(~held_out)
    check = np.flatnonzero(held_out)
    check_batch = classifier.tokenize([texts[i] for i in check])
    check_classes = targets[check].argmax(-1)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=LEARNING_RATE)
    generator = np.random.default_rng(seed)
    best, best_state, best_epoch, epoch = -1.0, None, 0, 0
    for epoch in range(1, MAX_EPOCHS + 1):
        classifier.train()
        order = generator.permutation(train)
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            batch = classifier.tokenize([texts[i] for i in rows])
            loss = nn.functional.cross_entropy(classifier(batch), targets[rows])  # soft targets
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        classifier.eval()
        with torch.no_grad():
            agreement = float((classifier(check_batch).argmax(-1) == check_classes).float().mean()) if len(check) else 0.0
        if agreement > best:
            best, best_state, best_epoch = agreement, copy.deepcopy(classifier.state_dict()), epoch
        elif epoch - best_epoch >= PATIENCE:
            break
    classifier.load_state_dict(best_state)
    classifier.eval()
    record = {"epochs": epoch, "best_epoch": best_epoch, "held_out_rows": int(len(check)),
              "held_out_agreement_with_teacher": best, "rows": int(len(train))}  # fmt: skip
    return classifier, record
