"""Low-precision weight copies: swapped in and out exactly, kept between uses, refreshed on change."""

import pytest
import torch
from torch import nn

from fastedit.models.precision import LowPrecisionWeights, cpu_has_native_bf16


def test_swap_and_restore():
    lin = nn.Linear(8, 4)
    ptr = lin.weight.data_ptr()
    before = lin.weight.detach().clone()
    lp = LowPrecisionWeights()
    with lp.swapped([lin]):
        assert lin.weight.dtype == torch.bfloat16 and lin.bias.dtype == torch.bfloat16
        assert torch.equal(lin.weight.float(), before.bfloat16().float())
        lin(torch.randn(2, 8, dtype=torch.bfloat16))
    assert lin.weight.data_ptr() == ptr and torch.equal(lin.weight, before)


def test_restored_on_error_and_interrupt():
    lin = nn.Linear(8, 4)
    lp = LowPrecisionWeights()
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with lp.swapped([lin]):
                raise exc
        assert lin.weight.dtype == torch.float32 and lin.bias.dtype == torch.float32


def test_copies_kept_and_refreshed_when_a_weight_changes():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    lp = LowPrecisionWeights()
    with lp.swapped([a, b]):
        pass
    assert lp.casts == 4
    with lp.swapped([a, b]):
        pass
    assert lp.casts == 4  # nothing changed: nothing re-cast
    with torch.no_grad():
        a.weight.add_(1.0)
    with lp.swapped([a, b]):
        assert torch.equal(a.weight.float(), (a.weight.data.float()))
        got = a.weight.detach().clone()
    assert lp.casts == 5
    assert torch.equal(got, a.weight.detach().bfloat16())


def test_tied_parameters_swap_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    lp = LowPrecisionWeights()
    with lp.swapped([emb, head]):
        assert head.weight is emb.weight and emb.weight.dtype == torch.bfloat16
    assert lp.casts == 1 and emb.weight.dtype == torch.float32


def test_native_bf16_detection_is_a_bool():
    assert isinstance(cpu_has_native_bf16(), bool)
