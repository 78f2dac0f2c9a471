import pytest
import torch
from peft import IA3Config, LoHaConfig, LoraConfig
from torch.utils.checkpoint import CheckpointError

from nanonet_hf.cohort import StudentCohort
from nanonet_hf.views import StudentViews
from nanonet_hf.layer_plan import parse_layer_choice, parse_student_layers

ID2LABEL = {0: "sport", 1: "food", 2: "tech"}


def build(tiny_model_dir, num_students=3, **kwargs):
    # init_lora_weights=False: random A and B, so LoRA is not a no-op and a routing mistake changes the logits
    kwargs.setdefault("lora_config", LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    return StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=num_students, **kwargs)


@pytest.fixture
def batch(tokenizer):
    texts = ["the team score a goal", "spicy pasta for dinner today", "new laptop chip", "we like this cloud server"]
    return tokenizer(texts, padding=True, return_tensors="pt")


# Where the students' adapters sit: every layer (no shared trunk), the top one or two of the three layers (a trunk
# of two or one layers runs once), a cut base with a trunk, and LoRA on the embeddings too (nothing can be shared).
LAYOUTS = {
    "all-layers": {},
    "top-1": {"adapter_layers": 1},
    "top-2": {"adapter_layers": 2},
    "cut-0,2-top-1": {"student_layers": "0,2", "adapter_layers": 1},
    "middle-only": {"adapter_layers": [1]},
    # LoRA with a bias on B (lora_bias): the block path adds the scaled bias of each student
    "lora-bias": {"lora_config": LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, lora_bias=True)},
    "embeddings-too": {
        "lora_config": LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["query", "word_embeddings"])
    },
}


def per_student_logits(cohort, batch):
    out = []
    for name in cohort.student_names:
        with cohort.single_student(name) as model:
            out.append(model(**batch).logits)
    return torch.stack(out, dim=1)  # [B, K, C]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("train_mode", [False, True])
def test_cohort_logits_equal_per_adapter_forwards(tiny_model_dir, batch, train_mode, layout):
    cohort = build(tiny_model_dir, **LAYOUTS[layout])
    cohort.train(train_mode)  # the tiny model has no dropout, so train mode is deterministic too
    logits = cohort(**batch)
    assert logits.shape == (4, 3, 3)
    torch.testing.assert_close(logits, per_student_logits(cohort, batch), atol=1e-5, rtol=0)


def test_students_start_different(tiny_model_dir, batch):
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=3)  # PEFT's default init
    logits = cohort(**batch)
    for j in range(1, 3):
        assert not torch.allclose(logits[:, 0], logits[:, j])


def grads_of_one_step(cohort, batch):
    cohort.train()
    cohort.zero_grad()
    logits = cohort(**batch)
    # a loss that weighs students differently, so that a routing mistake shows in the gradients
    (logits * torch.arange(1, 4)[None, :, None]).pow(2).sum().backward()
    cohort.release_routing()
    return {name: param.grad.clone() for name, param in cohort.named_parameters() if param.grad is not None}


def test_backward_reaches_every_student_and_never_the_base(tiny_model_dir, batch):
    cohort = build(tiny_model_dir)
    grads = grads_of_one_step(cohort, batch)
    trainable = {name for name, param in cohort.named_parameters() if param.requires_grad}
    assert set(grads) == trainable
    for student in cohort.student_names:
        lora = [name for name in trainable if f"lora_A.{student}" in name or f"lora_B.{student}" in name]
        head = [name for name in trainable if f"modules_to_save.{student}" in name]
        assert lora and head
        assert all(grads[name].abs().sum() > 0 for name in lora + head), student
    frozen = [param for param in cohort.parameters() if not param.requires_grad]
    assert frozen and all(param.grad is None for param in frozen)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, batch, layout):
    cohort = build(tiny_model_dir, **LAYOUTS[layout])
    plain = grads_of_one_step(cohort, batch)
    cohort.activation_checkpointing_enable()
    checkpointed = grads_of_one_step(cohort, batch)
    assert set(plain) == set(checkpointed)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_checkpointing_without_kept_routing_fails(tiny_model_dir, batch):
    # Negative control for the test above: drop the routing before backward (what PEFT's own context manager does)
    # and the recomputed forward differs from the original one, which non-reentrant checkpointing detects.
    cohort = build(tiny_model_dir)
    cohort.activation_checkpointing_enable()
    assert cohort.is_activation_checkpointing
    cohort.train()
    logits = cohort(**batch)
    cohort.release_routing()
    with pytest.raises(CheckpointError):
        (logits * torch.arange(1, 4)[None, :, None]).pow(2).sum().backward()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_equal_those_of_per_adapter_forwards(tiny_model_dir, batch, layout):
    cohort = build(tiny_model_dir, **LAYOUTS[layout])
    mixed = grads_of_one_step(cohort, batch)
    cohort.zero_grad()
    for k, name in enumerate(cohort.student_names):
        with cohort.single_student(name) as model:
            ((k + 1) * model(**batch).logits).pow(2).sum().backward()
    for name, param in cohort.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, mixed[name], atol=1e-5, rtol=1e-4)


def test_a_step_on_one_student_leaves_the_others_and_the_base_untouched(tiny_model_dir, batch):
    cohort = build(tiny_model_dir)
    before = {name: param.detach().clone() for name, param in cohort.named_parameters()}
    optimizer = torch.optim.SGD([p for p in cohort.parameters() if p.requires_grad], lr=1.0)
    cohort.train()
    cohort(**batch)[:, 1].pow(2).sum().backward()  # only student 1's output in the loss
    cohort.release_routing()
    optimizer.step()
    changed = {name for name, param in cohort.named_parameters() if not torch.equal(param, before[name])}
    assert changed and all("student_1" in name for name in changed)


def rows_seen_by_each_layer(cohort, batch):
    layers = cohort.peft_model.get_base_model().bert.encoder.layer
    seen, handles = [], []
    for index, layer in enumerate(layers):
        def record(module, args, kwargs, output, index=index):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen.append((index, hidden.shape[0], hidden.requires_grad))
        handles.append(layer.register_forward_hook(record, with_kwargs=True))
    cohort.train()
    cohort(**batch).sum().backward()
    cohort.release_routing()
    for handle in handles:
        handle.remove()
    return seen


def test_shared_trunk_runs_once_without_autograd(tiny_model_dir, batch):
    cohort = build(tiny_model_dir, adapter_layers=1)  # 3 layers: trunk = layers 0 and 1, adapters on layer 2
    assert cohort.shared_layers == 2
    adapted = {name.split(".layer.")[1].split(".")[0] for name, _ in cohort.named_parameters() if "lora_A" in name}
    assert adapted == {"2"}
    # (layer, rows it ran on, whether its input carries a graph): B = 4 rows, K = 3 students
    assert rows_seen_by_each_layer(cohort, batch) == [(0, 4, False), (1, 4, False), (2, 12, False)]
    full = build(tiny_model_dir)  # adapters everywhere: only the embeddings are shared
    assert full.shared_layers == 0
    assert [rows for _, rows, _ in rows_seen_by_each_layer(full, batch)] == [12, 12, 12]


def test_adapter_layers_follow_the_cut_base(tiny_model_dir):
    cohort = build(tiny_model_dir, student_layers="0,2", adapter_layers="1")
    assert cohort.shared_layers == 1
    assert {n.split(".layer.")[1][0] for n, _ in cohort.named_parameters() if "lora_B" in n} == {"1"}


@pytest.mark.parametrize("layers, message", [(4, "between 1 and"), ([2, 1], "increasing"), ([3], "0..2"), (0, "between")])
def test_bad_adapter_layers_are_refused(tiny_model_dir, layers, message):
    with pytest.raises(ValueError, match=message):
        build(tiny_model_dir, adapter_layers=layers)


def test_adapter_layers_and_layers_to_transform_are_exclusive(tiny_model_dir):
    config = LoraConfig(r=4, layers_to_transform=[1])
    with pytest.raises(ValueError, match="not both"):
        build(tiny_model_dir, adapter_layers=1, lora_config=config)


def test_trainable_state_round_trip_and_mismatch(tiny_model_dir):
    cohort, other = build(tiny_model_dir), build(tiny_model_dir, seed=7)
    other.load_trainable_state_dict(cohort.trainable_state_dict())
    theirs = other.trainable_state_dict()
    for name, tensor in cohort.trainable_state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    with pytest.raises(ValueError, match="does not match this cohort"):
        build(tiny_model_dir, num_students=2).load_trainable_state_dict(cohort.trainable_state_dict())


def test_student_layers_cut_the_base(tiny_model_dir, batch):
    cohort = build(tiny_model_dir, student_layers="0,2")
    assert cohort.config.num_hidden_layers == 2 and cohort.student_layers == [[0, 2]] * 3 and cohort.plan.kept == [0, 2]
    assert cohort(**batch).shape == (4, 3, 3)
    assert build(tiny_model_dir, student_layers=1).config.num_hidden_layers == 1


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None), (2, [2]), ("2", [2]), ("0,2", [[0, 2]]), ("1, 2", [[1, 2]]),  # one entry: every student's
        ([3, 2], [3, 2]), (["3", "0,2"], [3, [0, 2]]), ([3, [0, 2]], [3, [0, 2]]), ([[0, 1, 2], [0]], [[0, 1, 2], [0]]),
    ],
)  # fmt: skip
def test_parse_student_layers(value, expected):
    assert parse_student_layers(value) == expected


@pytest.mark.parametrize("value, expected", [(None, None), (2, 2), ("2", 2), ("0,2", [0, 2]), ([1, 2], [1, 2])])
def test_parse_adapter_layers(value, expected):
    assert parse_layer_choice(value) == expected


@pytest.mark.parametrize(
    "layers, message",
    [
        (5, r"student_layers=5 must be between 1 and the base's 3 layers"),
        ("2,0", "increasing"),
        ("0,3", r"0\.\.2"),
        ([3, 2], r"gives 2 entries, one per student, but num_students is 3"),  # 3 students
        ([3, 0, 2], r"student_layers\[1\]=0 must be between 1 and the base's 3 layers"),  # depth 0
        ([3, 4, 2], r"student_layers\[1\]=4 must be between 1"),  # deeper than the base
        ([3, "2,1", 2], r"student_layers\[1\]=\[2, 1\] must be distinct increasing"),  # unsorted
        ([3, "1,1", 2], r"student_layers\[1\]=\[1, 1\] must be distinct increasing"),  # repeated
        ([3, "two", 2], "layer count like '3' or layer indices"),
        ([], "empty list"),
    ],
)  # fmt: skip
def test_bad_student_layers_are_refused_naming_the_value(tiny_model_dir, layers, message):
    with pytest.raises(ValueError, match=message):
        build(tiny_model_dir, student_layers=layers)


@pytest.mark.parametrize(
    "config, message",
    [
        (IA3Config(target_modules=["query", "value"], feedforward_modules=[]), "only LoRA"),
        (LoHaConfig(target_modules=["query", "value"]), "only LoRA"),
        (LoraConfig(use_dora=True), "use_dora"),
    ],
)
def test_adapter_types_that_cannot_mix_batches_are_refused(tiny_model_dir, config, message):
    with pytest.raises(ValueError, match=message):
        StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, lora_config=config)


def test_num_students_must_be_positive(tiny_model_dir):
    with pytest.raises(ValueError, match="num_students"):
        build(tiny_model_dir, num_students=0)


def test_no_backward_below_where_a_students_adapters_begin(tiny_model_dir, batch):
    """A 3-layer and a 2-layer student, each adapting its top layer: the trunk is layer 0; layer 1 runs both students'
    rows (the 2-layer student's LoRA there), layer 2 the 3-layer student's alone. That student trains nothing below
    layer 2, so its rows enter layer 2 cut from the graph: the backward does not run through layer 1 for them."""
    cohort = build(tiny_model_dir, num_students=2, student_layers=[3, 2], adapter_layers=1).train()
    assert cohort.shared_layers == 1
    layer = cohort.peft_model.get_base_model().bert.encoder.layer[1]
    outputs = []

    def keep(module, args, kwargs, output):
        output.retain_grad()
        outputs.append(output)

    rows = batch["input_ids"].shape[0]
    for views, cut in ((None, True), (StudentViews(perturbation=torch.zeros(2, *batch["input_ids"].shape, 16)), False)):
        outputs.clear()
        handle = layer.register_forward_hook(keep, with_kwargs=True)
        try:
            cohort(**batch, views=views).pow(2).sum().backward()
        finally:
            handle.remove()
            cohort.release_routing()
        gradient = outputs[0].grad  # [2 B, L, H]: student 0's block, then student 1's
        assert gradient[rows:].abs().sum() > 0  # the 2-layer student's rows: its LoRA and head are above
        # the 3-layer student's rows: cut, unless an adversarial perturbation below needs their gradient
        assert (gradient[:rows].abs().sum() == 0) == cut
    assert all(param.grad is not None for param in cohort.parameters() if param.requires_grad)
