"""The K students' LoRA updates of one layer as two batched matmuls over student-major row blocks.

PEFT's mixed adapter batch (`LoraLayer._mixed_batch_forward`) serves any order of rows: per adapter it gathers that
adapter's rows with an index list, runs its LoRA, and scatters the update back (`result[rows] += update`). Its backward
then scatters and gathers again. In the cohort the rows are always student-major blocks (rows k·B … (k+1)·B − 1 belong
to student k), so each block is a view, and all K updates are one `torch.bmm` through the stacked A matrices and one
through the stacked B matrices. At K = 8 that gather/scatter was about an eighth of a training step on CPU
(`benchmarks/cohort_speed.py`).

PEFT still runs the frozen base layer (the rows are routed to its `"__base__"` name, which means "no adapter") and
still owns the weights: `lora_A[name]`, `lora_B[name]`, `lora_dropout[name]` and `scaling[name]` are read as they are,
so saving, loading, merging and export are unchanged.
"""

from collections.abc import Sequence

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

BASE_ROWS = "__base__"  # PEFT's adapter name for rows that take no adapter in a mixed batch


def supports_block_lora(module: nn.Module, names: Sequence[str]) -> bool:
    """Whether `module` is a plain LoRA Linear where every student in `names` is vanilla LoRA (no DoRA or other
    variant) of one rank, with or without a bias on B (`lora_bias`) for all of them alike, so that
    `block_lora_update` computes exactly what PEFT would."""
    if type(module) is not LoraLinear or not all(name in module.lora_A for name in names):
        return False
    if any(name in module.lora_variant for name in names):
        return False
    if any(module.lora_A[name].bias is not None for name in names):
        return False
    if len({module.lora_B[name].bias is None for name in names}) != 1:
        return False
    return len({module.lora_A[name].weight.shape for name in names}) == 1


def block_lora_update(module: LoraLinear, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """`[K·B, ..., in]` inputs → the LoRA updates `[K·B, ..., out]` where row block k goes through student `names[k]`:
    `lora_B(lora_A(dropout(x))) · scaling` for each block, as PEFT computes it. With one name, every row is that
    student's, whatever the shape of `x` (a table shared by all rows, e.g. relative-position embeddings)."""
    num_students = len(names)
    if x.shape[0] % num_students:
        raise ValueError(f"{x.shape[0]} rows cannot be split into {num_students} student blocks")
    dropouts = [module.lora_dropout[name] for name in names]
    if all(isinstance(dropout, nn.Identity) for dropout in dropouts):
        dropped = x
    elif len({repr(dropout) for dropout in dropouts}) == 1:  # one dropout for all rows: the same as one per block
        dropped = dropouts[0](x)
    else:
        dropped = torch.cat([dropout(block) for dropout, block in zip(dropouts, x.chunk(num_students))])
    lora_a = torch.stack([module.lora_A[name].weight for name in names])  # [K, r, in]
    scaling = torch.tensor([module.scaling[name] for name in names], dtype=lora_a.dtype, device=lora_a.device)
    # the scaling goes on the small B matrices, not on the K·B·T outputs
    lora_b = torch.stack([module.lora_B[name].weight for name in names]) * scaling[:, None, None]  # [K, out, r]
    dropped = dropped.to(lora_a.dtype).reshape(num_students, -1, x.shape[-1])  # [K, B·T, in]
    update = torch.bmm(torch.bmm(dropped, lora_a.transpose(1, 2)), lora_b.transpose(1, 2))  # [K, B·T, out]
    if module.lora_B[names[0]].bias is not None:  # lora_bias: PEFT scales B's bias with the rest of the update
        bias = torch.stack([module.lora_B[name].bias for name in names]) * scaling[:, None]  # [K, out]
        update = update + bias[:, None, :]
    return update.reshape(*x.shape[:-1], -1)
