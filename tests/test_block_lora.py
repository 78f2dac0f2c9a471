import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from nanonet_hf.block_lora import BASE_ROWS, block_lora_update, supports_block_lora
from nanonet_hf.cohort import StudentCohort

NAMES = ["student_0", "student_1", "student_2"]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 5)

    def forward(self, x):
        return self.proj(x)


def lora_layer(configs):
    """The LoRA Linear `proj` with one adapter per config (random A and B, so LoRA is not a no-op)."""
    torch.manual_seed(0)
    model = None
    for name, config in zip(NAMES, configs):
        if model is None:
            model = get_peft_model(Tiny(), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    layer = model.base_model.model.proj
    for name, param in layer.named_parameters():
        param.requires_grad_("lora_" in name)  # add_adapter leaves new adapters frozen
    return layer


def config(**kwargs):
    return LoraConfig(target_modules=["proj"], r=2, lora_alpha=4, init_lora_weights=False, **kwargs)


def peft_update(layer, x, names):
    """What PEFT's mixed adapter batch adds to the base layer for student-major row blocks."""
    rows = [name for name in names for _ in range(x.shape[0] // len(names))]
    return layer(x, adapter_names=rows) - layer(x, adapter_names=[BASE_ROWS] * len(rows))


@pytest.mark.parametrize("lora_bias", [False, True], ids=["plain", "lora-bias"])
@pytest.mark.parametrize("shape", [(6, 6), (6, 4, 6)])
def test_block_update_and_its_gradients_equal_peft_mixed_batch(shape, lora_bias):
    layer = lora_layer([config(lora_bias=lora_bias)] * 3)
    if lora_bias:  # B's bias starts at zero: random ones make a wrong scaling show
        with torch.no_grad():
            for name in NAMES:
                layer.lora_B[name].bias.normal_()
    x = torch.randn(*shape)
    ours, theirs = block_lora_update(layer, x, NAMES), peft_update(layer, x, NAMES)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    weights = [param for name, param in layer.named_parameters() if "lora_" in name]
    target = torch.randn_like(ours)
    ours_grads = torch.autograd.grad((ours * target).sum(), weights)
    theirs_grads = torch.autograd.grad((theirs * target).sum(), weights)
    for mine, peft_grad in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(mine, peft_grad, atol=1e-6, rtol=1e-5)


def test_block_update_applies_each_students_own_dropout():
    # student 0 has no dropout (Identity), student 1 drops everything, student 2 none: the per-block branch
    layer = lora_layer([config(), config(lora_dropout=1.0), config()]).train()
    x = torch.randn(6, 6)
    update = block_lora_update(layer, x, NAMES)
    assert torch.count_nonzero(update[2:4]) == 0
    torch.testing.assert_close(update[[0, 1, 4, 5]], peft_update(layer.eval(), x, NAMES)[[0, 1, 4, 5]])


def test_rows_must_split_into_student_blocks():
    with pytest.raises(ValueError, match="7 rows cannot be split into 3 student blocks"):
        block_lora_update(lora_layer([config()] * 3), torch.randn(7, 6), NAMES)


@pytest.mark.parametrize(
    "configs, expected",
    [
        ([config()] * 3, True),
        ([config(lora_bias=True)] * 3, True),  # a bias on B, for every student
        ([config(lora_bias=True), config(), config()], False),  # a bias on B for some students only
        ([config(use_dora=True)] * 3, False),  # a LoRA variant
        ([config(), config(), LoraConfig(target_modules=["proj"], r=3)], False),  # ranks differ
    ],
)
def test_which_layers_take_the_block_path(configs, expected):
    assert supports_block_lora(lora_layer(configs), NAMES) is expected
    assert not supports_block_lora(lora_layer([config()] * 2), NAMES)  # a student without an adapter here


def test_cohort_uses_the_block_path_on_every_lora_linear(tiny_model_dir):
    def hooked(lora_config):
        cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label={0: "a", 1: "b"}, num_students=2, lora_config=lora_config)
        layers = [module for module in cohort.modules() if hasattr(module, "lora_A")]
        return [bool(module._forward_hooks) for module in layers]

    assert all(hooked(LoraConfig(r=2)))
    assert all(hooked(LoraConfig(r=2, lora_bias=True)))


def test_one_shared_dropout_drops_every_block_in_training_and_none_in_eval():
    layer = lora_layer([config(lora_dropout=1.0)] * 3)
    x = torch.randn(6, 6)
    assert torch.count_nonzero(block_lora_update(layer.train(), x, NAMES)) == 0
    torch.testing.assert_close(block_lora_update(layer.eval(), x, NAMES), peft_update(layer, x, NAMES))
