"""How far to trust a teacher, read from labeled rows it did not learn from, never from the test split.

Cross-fitting ([`cross_fitted_logits`]): the labeled rows are split into folds (stratified), and every row is
predicted by the same teacher made from the other folds (`teacher.with_rows`: SetFit retrained, an LLM's examples and
calibration taken from the other rows). From those held-out predictions come:

- the teacher's temperature ([`fit_temperature`], `teacher_temperature="fit"`): the one number that makes its
  probabilities match how often it is right (temperature scaling, Guo et al. 2017). A SetFit head trained on few labels
  is under-confident with one body (MiniLM: fitted temperature below 1, its targets sharpened) and nearly calibrated
  with another (MPNet), so one fixed sharpening cannot serve both;
- an ensemble's weights ([`TeacherEnsemble`] with `weights="fit"`).

Each fold's logits are cached like any teacher's ([`add_teacher_logits`], keyed by the fold teacher's fingerprint), so a
rerun, or a second process, trains no fold teacher again.
"""

import logging
import weakref

import numpy as np
from datasets import Dataset


logger = logging.getLogger(__name__)

# the bounds of a fitted temperature: a teacher right on every held-out row would otherwise be sharpened to one-hot
TEMPERATURE_BOUNDS = (0.05, 20.0)


def cross_fitting_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """`[N]` the fold of each labeled row: stratified (every fold sees every class), drawn by `seed`."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def check_cross_fitting(labeled: Dataset, folds: int = 3, teacher=None) -> None:
    """Raise, before any work, unless every class has a labeled row per fold and `teacher` (when given) can be
    remade from other rows."""
    if teacher is not None and not teacher.cross_fittable:
        teacher.with_rows(labeled)  # raises, naming the teacher
    names = labeled.features["label"].names
    counts = np.bincount(np.asarray(labeled["label"]), minlength=len(names))
    if folds < 2 or counts.min() < folds:
        raise ValueError(
            f"Cross-fitting with {folds} folds needs >= {max(folds, 2)} labeled rows of every class; class "
            f"{names[int(counts.argmin())]!r} has {int(counts.min())}."
        )


_FOLD_TEACHERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fold_teachers(teacher, labeled: Dataset, *, folds: int = 3, seed: int = 0) -> list[tuple[np.ndarray, object]]:
    """`(held-out row indices, teacher made from the other rows)` per fold, made once per teacher and split: the
    same fold teachers serve every later call (their training is lazy, and under several processes
    [`nanonet_hf.setfit_teacher.train_in_every_process`] trains them before their logits are asked for)."""
    check_cross_fitting(labeled, folds, teacher)
    made = _FOLD_TEACHERS.setdefault(teacher, {})
    key = (labeled._fingerprint, folds, seed)
    if key not in made:
        fold = cross_fitting_folds(labeled["label"], folds, seed)
        made[key] = [(np.flatnonzero(fold == f), teacher.with_rows(labeled.select(np.flatnonzero(fold != f))))
                     for f in range(folds)]  # fmt: skip
    return made[key]


def cross_fitted_logits(teacher, labeled: Dataset, *, folds: int = 3, seed: int = 0, max_length: int = 64) -> np.ndarray:
    """`[N, C]` the logits of each labeled row (`text`, `label`) from `teacher` remade without its fold
    (`teacher.with_rows(other folds)`), cached per fold teacher."""
    made = fold_teachers(teacher, labeled, folds=folds, seed=seed)  # checks first
    found = np.zeros((len(labeled), len(teacher.label_names)), dtype=np.float64)
    for held, fold_teacher in made:
        done = fold_teacher.add_logits(labeled.select(held).select_columns(["text"]), max_length=max_length)
        found[held] = np.asarray(done["teacher_logits"])
    return found


def temperature_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(`logits` / `temperature`)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(-1, keepdims=True)
    log_probs = scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T (within `bounds`) that minimises the labels' NLL under softmax(`logits` / T).

    The NLL is convex in 1/T, so it has one minimum along log T: a golden-section search finds it.
    """
    low, high = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = (temperature_nll(logits, labels, np.exp(x)) for x in (a, b))
    for _ in range(60):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = temperature_nll(logits, labels, np.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = temperature_nll(logits, labels, np.exp(b))
    return float(np.exp((low + high) / 2))


def fitted_teacher_temperature(teacher, labeled: Dataset, *, folds: int = 3, seed: int = 0, max_length: int = 64) -> dict:
    """The teacher's temperature fitted on its cross-fitted logits of the labeled rows, and what it was read from:
    `{"temperature", "folds", "held_out_accuracy", "nll_before", "nll_after"}`."""
    logits = cross_fitted_logits(teacher, labeled, folds=folds, seed=seed, max_length=max_length)
    labels = np.asarray(labeled["label"])
    temperature = fit_temperature(logits, labels)
    found = {
        "temperature": round(temperature, 4),
        "folds": folds,
        "held_out_accuracy": float((logits.argmax(-1) == labels).mean()),
        "nll_before": temperature_nll(logits, labels, 1.0),
        "nll_after": temperature_nll(logits, labels, temperature),
    }
    logger.info("Teacher temperature fitted on %d labeled rows (%d folds, held-out accuracy %.3f): %.3f (NLL %.3f -> %.3f)",
                len(labels), folds, found["held_out_accuracy"], temperature, found["nll_before"], found["nll_after"])  # fmt: skip
    return found


# a teacher must beat always answering the majority class by this much on the labeled rows, or it is refused
MAJORITY_MARGIN = 0.05


def labeled_accuracy(teacher, labeled: Dataset, logits: np.ndarray, *, calibration: dict | None = None) -> dict:
    """How often `teacher` is right on the labeled rows, read as held out as the run allows, beside the majority
    class's share: `{"teacher", "accuracy", "rows", "how", "majority", "majority_class", "members"}`.

    - a fitted temperature's cross-fitted predictions (`calibration`), or a fitted ensemble's: held out;
    - an LLM's calibrated predictions (no row is its own prompt example; the calibration bias is fitted on the rows);
    - else `logits` (`[N, C]`, the teacher's own of the labeled rows): in-sample for a teacher trained on them
      (`learns_labeled_rows`), where a low score is damning and a high one proves little; held out otherwise.
    `members`: an ensemble's members' accuracies (`[{"name", "accuracy"}]`), filled by [`score_teacher`]."""
    labels = np.asarray(labeled["label"])
    names = labeled.features["label"].names
    counts = np.bincount(labels, minlength=len(names))
    # an LLM calibrates on the labeled rows when first asked: only where its report is read
    report = teacher.calibration_report() if calibration is None and teacher.members == [teacher] else None
    if calibration is not None:
        accuracy, how = calibration["held_out_accuracy"], f"held out: {calibration['folds']}-fold cross-fitting"
    elif getattr(teacher, "weights_setting", None) == "fit":
        accuracy = float((teacher.combine(teacher.cross_fitted_logits()).argmax(-1) == labels).mean())
        how = f"held out: {teacher.folds}-fold cross-fitting"
    elif report is not None:
        accuracy, how = report["labeled_accuracy_calibrated"], "after calibration on these rows (none its own example)"
    else:
        accuracy = float((np.asarray(logits).argmax(-1) == labels).mean())
        how = "in-sample: it was trained on these rows" if teacher.learns_labeled_rows else "these rows"
    return {
        "teacher": teacher.name, "accuracy": float(accuracy), "rows": int(len(labels)), "how": how,
        "majority": float(counts.max() / len(labels)), "majority_class": names[int(counts.argmax())], "members": [],
    }  # fmt: skip


def check_teacher_beats_majority(found: dict, *, allow_weak: bool) -> None:
    """Raise, naming the teacher, its accuracy and the baseline, if [`labeled_accuracy`]'s `found` is no better than
    the majority class's share plus `MAJORITY_MARGIN` (unless `allow_weak`, which logs a warning instead). Sets
    `found["beats_majority"]`."""
    found["beats_majority"] = found["accuracy"] > found["majority"] + MAJORITY_MARGIN
    if found["beats_majority"]:
        return
    message = (
        f"The teacher {found['teacher']} is right on {found['accuracy']:.1%} of the {found['rows']} labeled rows "
        f"({found['how']}), no better than always answering the majority class {found['majority_class']!r} "
        f"({found['majority']:.1%}) plus {MAJORITY_MARGIN:.0%}: the students would learn its noise."
    )
    if allow_weak:
        logger.warning("%s Teaching anyway (allow_weak_teacher).", message)
        return
    raise ValueError(
        f"{message} Check the teacher (its labels, prompt or verbalizers; a stronger model), or pass "
        "--allow_weak_teacher true (allow_weak_teacher=True) to teach anyway."
    )


def score_teacher(teacher, labeled: Dataset, logits_of, *, calibration: dict | None = None, allow_weak: bool = False) -> dict:
    """Score `teacher` on the labeled rows ([`labeled_accuracy`]; `logits_of(t)`: the `[N, C]` logits of teacher `t`
    on them, for the teacher and an ensemble's members), log it, and refuse it if it is no better than the majority
    class ([`check_teacher_beats_majority`]). Returns what was found."""
    found = labeled_accuracy(teacher, labeled, logits_of(teacher), calibration=calibration)
    labels = np.asarray(labeled["label"])
    if teacher.members != [teacher]:
        found["members"] = [{"name": member.name, "accuracy": float((logits_of(member).argmax(-1) == labels).mean())}
                            for member in teacher.members]  # fmt: skip
    logger.info("Teacher %s on the %d labeled rows: accuracy %.3f (%s); the majority class %r has %.3f", found["teacher"],
                found["rows"], found["accuracy"], found["how"], found["majority_class"], found["majority"])  # fmt: skip
    check_teacher_beats_majority(found, allow_weak=allow_weak)
    return found
