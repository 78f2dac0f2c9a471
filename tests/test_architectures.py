"""Every supported architecture (nanonet_hf/architectures.py), as a tiny random model saved both as a classifier and
as the pre-training checkpoint users download: the cohort's one forward gives each student exactly what that student
gives alone (logits and gradients; B = 1 and B > 1; shared trunk; cut base), every view does what it says or is
refused, bias students likewise, the export reloads without peft with the same logits, and the trainer trains and
resumes. Unsupported architectures are refused before any weights are loaded."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import AutoPeftModelForSequenceClassification, LoraConfig
from transformers import AlbertConfig, AlbertForSequenceClassification, AutoModelForSequenceClassification, GPT2Config

from nanonet_hf import MutualDistillationTrainer, StudentCohort, export_student
from nanonet_hf.export import export_family, frozen_base
from nanonet_hf.architectures import ARCHITECTURES
from nanonet_hf.data import sample_per_class, tokenize, training_dataset
from nanonet_hf.views import StudentViews, make_student_views

from .conftest import LABELS
from .test_trainer import make_args
from .tiny_models import KINDS, TINY, save_tiny, tiny_tokenizer

ID2LABEL = dict(enumerate(LABELS))
TEXTS = ["the team score a goal today", "spicy pasta", "new laptop chip and code for the cloud server"]
CASES = [(name, kind) for name in TINY for kind in KINDS]
# where the adapters sit: every layer; the top layer only (a trunk of two layers runs once); a cut base with a trunk;
# students of different depths (3 layers, 1 layer, layers 0 and 2: every layer is skipped by some student but the
# first), without and with a trunk (each student's top layer adapted)
LAYOUTS = {
    "all-layers": {},
    "trunk": {"adapter_layers": 1},
    "cut-trunk": {"student_layers": "0,2", "adapter_layers": 1},
    "mixed-depths": {"student_layers": [3, 1, "0,2"]},
    "mixed-trunk": {"student_layers": [3, 2, "0,2"], "adapter_layers": 1},
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    made = {}

    def get(name: str, kind: str) -> str:
        if (name, kind) not in made:
            made[name, kind] = save_tiny(name, kind, str(root / f"{name}-{kind}"))
        return made[name, kind]

    return get


@pytest.fixture(params=CASES, ids=[f"{name}-{kind}" for name, kind in CASES])
def case(request, checkpoints):
    name, kind = request.param
    return name, checkpoints(name, kind)


def build(path, num_students=3, **kwargs):
    # random LoRA A and B: LoRA is not a no-op, so a routing mistake changes the logits
    kwargs.setdefault("lora_config", LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    return StudentCohort.from_pretrained(path, id2label=ID2LABEL, num_students=num_students, **kwargs)


def encode(name, texts=TEXTS):
    """The texts as a padded batch from the tiny `name` model's tokenizer (with its own model inputs)."""
    return dict(tiny_tokenizer(TINY[name][2])(texts, padding=True, return_tensors="pt"))


def alone(cohort, k, **inputs):
    with cohort.single_student(cohort.student_names[k]) as model:
        return model(**inputs).logits


def test_every_tiny_model_is_a_supported_architecture_and_every_architecture_has_one():
    model_types = {config.model_type for config, _, _ in TINY.values()}
    assert model_types == set(ARCHITECTURES)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_forward_gives_each_student_its_own_logits(case, layout, rows):
    name, path = case
    cohort = build(path, **LAYOUTS[layout]).eval()
    batch = encode(name, TEXTS[:rows])
    seen = []  # rows reaching each encoder layer: B in the trunk, K·B above it
    layers = cohort.peft_model.get_base_model().get_submodule(cohort.architecture.layers)
    handles = [
        layer.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
        for layer in layers
    ]  # fmt: skip
    with torch.no_grad():
        logits = cohort(**batch)
    for handle in handles:
        handle.remove()
    assert logits.shape == (rows, 3, 3)
    # B rows in the trunk, then the row blocks of the students that keep each layer (all three, or fewer)
    trunk, present = cohort.shared_layers, cohort.plan.present()
    assert seen == [rows if p < trunk else rows * len(present[p] or range(3)) for p in range(len(layers))]
    with torch.no_grad():
        for k in range(3):
            torch.testing.assert_close(logits[:, k], alone(cohort, k, **batch), atol=1e-5, rtol=0)
    assert not torch.allclose(logits[:, 0], logits[:, 1], atol=1e-4)  # the students differ


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "activation-checkpointing"])
@pytest.mark.parametrize("layout", ["all-layers", "trunk", "mixed-depths", "mixed-trunk"])
def test_one_backward_gives_each_student_its_own_gradients(case, layout, checkpointing):
    name, path = case
    cohort = build(path, **LAYOUTS[layout]).eval()  # eval: no dropout, so the two passes are comparable
    batch = encode(name)
    if checkpointing:  # the backward re-runs each layer's forward: the routing must still be there
        if not cohort.peft_model.get_base_model().supports_gradient_checkpointing:
            with pytest.raises(ValueError, match="does not support"):
                cohort.activation_checkpointing_enable()
            return
        cohort.activation_checkpointing_enable()
        assert cohort.is_activation_checkpointing
    weights = torch.arange(1, 4)[None, :, None]  # the students count differently, so a mix-up shows
    (cohort(**batch) * weights).pow(2).sum().backward()
    cohort.release_routing()
    together = {key: param.grad.clone() for key, param in cohort.named_parameters() if param.grad is not None}
    cohort.zero_grad()
    for k in range(3):
        ((k + 1) * alone(cohort, k, **batch)).pow(2).sum().backward()
    trainable = {key for key, param in cohort.named_parameters() if param.requires_grad}
    assert set(together) == trainable
    for key, param in cohort.named_parameters():
        if param.requires_grad:
            # gradients reach tens here: the tolerance follows each tensor's scale (float32 sums in another order,
            # through up to 6 adapted linears per layer: up to 3e-5 of the scale seen); a student mixed up with
            # another is off by the order of the gradient itself
            scale = max(1.0, param.grad.abs().max().item())
            torch.testing.assert_close(together[key], param.grad, atol=1e-4 * scale, rtol=1e-4, msg=key)
    heads = {key.split("modules_to_save.")[0] for key in trainable if "modules_to_save" in key}
    assert len(heads) == len(cohort.architecture.head)  # every head module is per student


def _backbone_sees(cohort, mask):
    """A pre-hook that hands the backbone `mask` while the head above it keeps the batch's own mask (mean pooling)."""
    def swap(module, args, kwargs):
        kwargs["attention_mask"] = mask
        return args, kwargs

    return cohort.peft_model.get_base_model().base_model.register_forward_pre_hook(swap, with_kwargs=True)


@pytest.mark.parametrize("layout", ["all-layers", "mixed-depths"])
def test_cutoff_equals_that_student_alone_without_the_cut_tokens(case, layout):
    name, path = case
    cohort = build(path, **LAYOUTS[layout]).eval()
    batch = encode(name)
    torch.manual_seed(1)
    views = make_student_views(["cutoff", "dropout", "cutoff"], batch["attention_mask"], cutoff_rate=0.3)
    with torch.no_grad():
        logits = cohort(**batch, views=views)
        torch.testing.assert_close(logits[:, 1], alone(cohort, 1, **batch), atol=1e-5, rtol=0)
        for k in (0, 2):  # no key attends to a cut token at any layer: as if the mask left it out below the head
            handle = _backbone_sees(cohort, batch["attention_mask"] * views.key_mask[k].long())
            try:
                expected = alone(cohort, k, **batch)
            finally:
                handle.remove()
            torch.testing.assert_close(logits[:, k], expected, atol=1e-5, rtol=0)
        assert not torch.allclose(logits[:, 0], alone(cohort, 0, **batch), atol=1e-4)


@pytest.mark.parametrize("layout", ["all-layers", "mixed-depths"])
def test_shuffle_moves_positions_in_the_models_own_numbering_or_is_refused(case, layout):
    name, path = case
    cohort = build(path, **LAYOUTS[layout]).eval()
    batch = encode(name)
    torch.manual_seed(2)
    views = make_student_views(["dropout", "shuffle", "dropout"], batch["attention_mask"])
    if not cohort.architecture.shuffles:
        with pytest.raises(ValueError, match=f"shuffle view permutes position ids, but {cohort.architecture.name}"):
            cohort.check_views(["dropout", "shuffle"])
        with pytest.raises(ValueError, match="shuffle view"):
            cohort(**batch, views=views)
        return
    with torch.no_grad():
        logits = cohort(**batch, views=views)
        # the students without the view see the model's own positions (RoBERTa's start at padding_idx + 1)
        for k in (0, 2):
            torch.testing.assert_close(logits[:, k], alone(cohort, k, **batch), atol=1e-5, rtol=0)
        shuffled = cohort.position_ids(batch["input_ids"], views.position_order[1])
        torch.testing.assert_close(logits[:, 1], alone(cohort, 1, **batch, position_ids=shuffled), atol=1e-5, rtol=0)
        assert not torch.allclose(logits[:, 1], alone(cohort, 1, **batch), atol=1e-4)


def test_the_trainer_refuses_a_view_the_architecture_cannot_apply_before_training(checkpoints, datasets, tmp_path):
    path = checkpoints("deberta-v3", "pretrained")
    cohort = build(path)
    args = make_args(tmp_path, student_views="cutoff,shuffle")
    with pytest.raises(ValueError, match="DeBERTa-v2/v3 encodes positions as relative positions"):
        MutualDistillationTrainer(model=cohort, args=args, train_dataset=datasets[0], processing_class=tiny_tokenizer(TINY["deberta-v3"][2]))
    assert not os.path.exists(args.output_dir)


@pytest.mark.parametrize("layout", ["all-layers", "mixed-depths"])
def test_adversarial_perturbation_joins_the_students_input_hidden_states(case, layout):
    name, path = case
    cohort = build(path, **LAYOUTS[layout]).eval()
    batch = encode(name)
    rows, length = batch["input_ids"].shape
    torch.manual_seed(3)
    noise = torch.randn(3, rows, length, cohort.config.hidden_size)
    noise[1] = 0
    with torch.no_grad():
        logits = cohort(**batch, views=StudentViews(perturbation=noise))
        layer = cohort.peft_model.get_base_model().get_submodule(cohort.architecture.layers)[0]  # every student's first
        for k in range(3):
            def add(module, args, kwargs, k=k):
                if args:
                    return (args[0] + noise[k], *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + noise[k]}

            handle = layer.register_forward_pre_hook(add, with_kwargs=True)
            try:
                torch.testing.assert_close(logits[:, k], alone(cohort, k, **batch), atol=1e-5, rtol=0)
            finally:
                handle.remove()


@pytest.mark.parametrize("layout", ["all-layers", "cut-trunk", "mixed-depths"])
def test_bias_students_get_their_own_logits_and_gradients_or_are_refused(case, layout):
    name, path = case
    settings = {key: value for key, value in LAYOUTS[layout].items()}
    if name.startswith("modernbert"):  # ModernBERT's linear layers and norms have no biases (attention_bias=False)
        with pytest.raises(ValueError, match="hold no Linear or LayerNorm with a bias"):
            build(path, adapter_type="bias", **settings)
        return
    cohort = build(path, adapter_type="bias", **settings).eval()
    with torch.no_grad():
        for delta in cohort.student_biases.deltas.values():
            delta.normal_(std=0.5)
    batch = encode(name)
    logits = cohort(**batch)
    logits.pow(2).sum().backward()
    cohort.release_routing()
    together = {key: delta.grad.clone() for key, delta in cohort.student_biases.deltas.items()}
    cohort.zero_grad()
    for k in range(3):
        expected = alone(cohort, k, **batch)
        expected.pow(2).sum().backward()
        torch.testing.assert_close(logits[:, k], expected, atol=1e-5, rtol=0)
    for key, delta in cohort.student_biases.deltas.items():
        scale = max(1.0, delta.grad.abs().max().item())
        torch.testing.assert_close(together[key], delta.grad, atol=1e-5 * scale, rtol=1e-4, msg=key)


@pytest.mark.parametrize("adapter_type", ["lora", "bias"])
@pytest.mark.parametrize("layout", ["all-layers", "cut-trunk", "mixed-depths", "mixed-trunk"])
def test_export_gives_the_evaluated_students_logits(case, layout, adapter_type, tmp_path):
    name, path = case
    if adapter_type == "bias" and name.startswith("modernbert"):
        pytest.skip("ModernBERT has no biases (refusal tested above)")
    cohort = build(path, adapter_type=adapter_type, **LAYOUTS[layout]).eval()
    if adapter_type == "bias":
        with torch.no_grad():
            for delta in cohort.student_biases.deltas.values():
                delta.normal_(std=0.5)
    batch = encode(name)
    with torch.no_grad():
        evaluated = cohort(**batch)
    tokenizer = tiny_tokenizer(TINY[name][2])
    exported = export_student(cohort, 1, str(tmp_path / "run"), tokenizer)
    family = export_family(cohort, str(tmp_path / "run"), tokenizer)
    for k, folder in [(1, exported.student_dir), *enumerate(family)]:
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        # a model of the student's own depth, its per-layer config cut with it (ModernBERT's layer_types)
        assert model.config.num_hidden_layers == cohort.depths[k] == len(model.get_submodule(cohort.architecture.layers))
        for key in cohort.architecture.layer_config:
            assert len(getattr(model.config, key)) == cohort.depths[k]
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, evaluated[:, k], atol=1e-5, rtol=0, msg=folder)
    if adapter_type == "lora":
        with torch.no_grad():
            adapter = AutoPeftModelForSequenceClassification.from_pretrained(exported.adapter_dir).eval()
            torch.testing.assert_close(adapter(**batch).logits, evaluated[:, 1], atol=1e-5, rtol=0)


def test_weights_the_checkpoint_lacks_are_drawn_from_the_seed_logged_and_kept(checkpoints, caplog):
    path = checkpoints("bert", "pretrained")  # a masked-LM checkpoint: no pooler
    with caplog.at_level("WARNING", logger="nanonet_hf.cohort"):
        cohort = build(path, seed=5)
    assert any(key.startswith("bert.pooler.") for key in cohort.new_weights)
    assert "bert.pooler.dense.weight" in caplog.text and "seed 5" in caplog.text
    again, other = build(path, seed=5), build(path, seed=6)
    pooler = lambda c: frozen_base(c).bert.pooler.dense.weight  # noqa: E731
    assert torch.equal(pooler(cohort), pooler(again)) and not torch.equal(pooler(cohort), pooler(other))


LOAD_WITHOUT_PEFT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    results = {}
    for folder, texts in json.loads(sys.argv[1]).items():
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with torch.no_grad():
            results[folder] = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.tolist()
    assert "peft" not in sys.modules, "loading the exported students imported peft"
    print(json.dumps(results))
    """
)


def test_every_export_loads_in_a_process_without_peft(checkpoints, tmp_path):
    expected, jobs = {}, {}
    for name, kind in CASES:
        path = checkpoints(name, kind)
        cohort = build(path, **LAYOUTS["mixed-trunk"]).eval()
        with torch.no_grad():
            logits = cohort(**encode(name))
        tokenizer = tiny_tokenizer(TINY[name][2])
        folder = export_student(cohort, 2, str(tmp_path / f"{name}-{kind}"), tokenizer).student_dir
        expected[folder], jobs[folder] = logits[:, 2], TEXTS
        for k, member in enumerate(export_family(cohort, str(tmp_path / f"{name}-{kind}"), tokenizer)):
            expected[member], jobs[member] = logits[:, k], TEXTS
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PEFT, json.dumps(jobs)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for folder, logits in expected.items():
        torch.testing.assert_close(torch.tensor(loaded[folder]), logits, atol=1e-5, rtol=0, msg=folder)


def test_trainer_trains_with_views_and_resumes_to_the_same_weights(case, toy_pool, tmp_path):
    name, path = case
    tokenizer = tiny_tokenizer(TINY[name][2])
    labeled, rest = sample_per_class(toy_pool, 4, seed=0)
    train = training_dataset(labeled, rest.remove_columns("label"))
    train = train.add_column("teacher_logits", torch.randn(len(train), 3, generator=torch.Generator().manual_seed(0)).tolist())
    train = tokenize(train, tokenizer, 16)
    views = "cutoff,shuffle,dropout" if ARCHITECTURES[TINY[name][0].model_type].shuffles else "cutoff,adversarial,dropout"

    def trainer(output, **overrides):
        # students of different depths: a full one, one of a single layer, one of layers 0 and 2
        args = make_args(tmp_path / output, max_steps=4, student_views=views, save_strategy="steps", save_steps=2,
                         student_layers=[3, 1, "0,2"], **overrides)  # fmt: skip
        cohort = StudentCohort.from_pretrained(path, id2label=ID2LABEL, num_students=3, lora_config=args.lora_config(),
                                               student_layers=args.student_layers, seed=0)  # fmt: skip
        return MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer)

    straight = trainer("straight")
    before = {key: tensor.clone() for key, tensor in straight.model.trainable_state_dict().items()}
    straight.train()
    after = straight.model.trainable_state_dict()
    assert all(not torch.equal(before[key], after[key]) for key in before), "a student's weights did not move"
    resumed = trainer("straight")
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "out" / "checkpoint-2"))
    for key, tensor in resumed.model.trainable_state_dict().items():
        torch.testing.assert_close(tensor, after[key], atol=1e-6, rtol=1e-5, msg=key)


# ---- refused up front ----


def test_a_shared_layer_model_is_refused_saying_why(tmp_path):
    config = AlbertConfig(vocab_size=40, embedding_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=32)  # fmt: skip
    AlbertForSequenceClassification(config).save_pretrained(tmp_path / "albert")
    with pytest.raises(ValueError, match="ALBERT shares one set of layer weights across all its layers"):
        build(str(tmp_path / "albert"))


def test_an_unsupported_architecture_is_refused_before_loading_weights(tmp_path):
    GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40).save_pretrained(tmp_path / "gpt2")  # a config, no weights
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not a supported student base.*BERT \(bert\).*ModernBERT"):
        build(str(tmp_path / "gpt2"))


def test_modernbert_cut_must_keep_its_first_layer(checkpoints):
    with pytest.raises(ValueError, match="drops layer 0, which ModernBERT builds differently"):
        build(checkpoints("modernbert-cls", "classifier"), student_layers="1,2")
    # one student of a family may not drop it either, and the message names that student
    with pytest.raises(ValueError, match=r"student_layers\[1\]=\[1, 2\] drops layer 0, which ModernBERT"):
        build(checkpoints("modernbert-mean", "pretrained"), student_layers=[3, "1,2", 2])


def test_deberta_with_a_convolution_layer_is_refused(tmp_path):
    config, _, _ = TINY["deberta-v3"]
    config = type(config)(**{**config.to_dict(), "conv_kernel_size": 3})
    config.save_pretrained(tmp_path / "deberta-conv")
    with pytest.raises(ValueError, match="convolution layer"):
        build(str(tmp_path / "deberta-conv"))


@pytest.mark.parametrize("kind", KINDS)
def test_lora_on_berts_pooler_is_routed_per_student_and_exported(checkpoints, kind, tmp_path):
    """BERT's head reads the pooler (dense + tanh on the first token), which belongs to the frozen base; LoRA on it
    (`lora_target_modules` + `pooler.dense`) gives each student its own pooler and merges into the export."""
    path, targets = checkpoints("bert", kind), [*ARCHITECTURES["bert"].lora_targets, "pooler.dense"]
    cohort = build(path, lora_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)).eval()
    without = build(path, lora_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets[:-1])).eval()
    assert cohort.shared_layers == 0  # above the layers: the embeddings still run once for all students
    batch = encode("bert")
    with torch.no_grad():
        logits = cohort(**batch)
        for k in range(3):
            torch.testing.assert_close(logits[:, k], alone(cohort, k, **batch), atol=1e-5, rtol=0)
        assert not torch.allclose(logits, without(**batch), atol=1e-4)  # the pooler's LoRA changes the logits
    exported = export_student(cohort, 1, str(tmp_path / "run"), tiny_tokenizer(TINY["bert"][2]))
    model = AutoModelForSequenceClassification.from_pretrained(exported.student_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, logits[:, 1], atol=1e-5, rtol=0)


def test_a_lora_target_that_matches_nothing_is_refused(checkpoints):
    """PEFT needs only one target to match; with `adapter_layers` it drops a target outside the encoder layers
    silently. The cohort names it instead."""
    path = checkpoints("bert", "classifier")
    with pytest.raises(ValueError, match=r"\['pooler.dense'\] match no module of the model with adapter_layers"):
        build(path, adapter_layers=1, lora_config=LoraConfig(target_modules=["query", "pooler.dense"]))
    with pytest.raises(ValueError, match=r"\['qeury'\] match no module"):
        build(path, lora_config=LoraConfig(target_modules=["query", "qeury"]))
