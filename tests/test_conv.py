"""The dilated causal convolution block: causality, receptive field, any length, streaming."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recsys.modules.conv import (
    CausalConv1d,
    GatedResidualBlock,
    causal_padding,
    effective_kernel_size,
    pad_left,
    receptive_field,
)


class _Stack(nn.Module):
    """Gated residual blocks with dilations 1, 2, 4, ...: the TCAE encoder's core."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int):
        super().__init__()
        self.dilations = [2**i for i in range(n_layers)]
        self.blocks = nn.ModuleList(GatedResidualBlock(channels, kernel_size, d) for d in self.dilations)

    def forward(self, x):
        out = 0
        for block in self.blocks:
            x, skip = block(x)
            out = out + skip
        return out


def _dependency_span(model: nn.Module, channels: int, length: int, t: int) -> tuple[int, int]:
    """First and last input frame that output frame t depends on (from the gradient)."""
    x = torch.randn(1, channels, length, dtype=torch.float64, requires_grad=True)
    model(x)[0, :, t].sum().backward()
    touched = (x.grad.abs().sum(dim=1)[0] > 0).nonzero().flatten()
    return int(touched.min()), int(touched.max())


@pytest.mark.parametrize(("k", "d"), [(1, 1), (2, 1), (3, 1), (3, 4), (5, 3)])
def test_padding_helpers_match_formula(k, d):
    assert effective_kernel_size(k, d) == (k - 1) * d + 1
    assert causal_padding(k, d) == (k - 1) * d
    x = torch.arange(6.0).view(1, 1, 6)
    padded = pad_left(x, causal_padding(k, d))
    assert padded.shape[-1] == 6 + (k - 1) * d
    assert torch.equal(padded[..., -6:], x)
    assert torch.all(padded[..., : (k - 1) * d] == 0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="dilation"):
        effective_kernel_size(3, 0)
    with pytest.raises(ValueError, match="padding"):
        pad_left(torch.zeros(1, 1, 3), -1)


@pytest.mark.parametrize(("k", "d"), [(2, 1), (3, 2), (4, 5)])
def test_single_conv_sees_exactly_its_effective_kernel(k, d):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 4, k, d).double()
    nn.init.uniform_(conv.conv.weight, 0.5, 1.0)  # no accidental zero weights
    t = 40
    first, last = _dependency_span(conv, 3, 64, t)
    assert last == t
    assert t - first + 1 == effective_kernel_size(k, d)


@pytest.mark.parametrize(("k", "n_layers"), [(2, 4), (3, 5)])
def test_stack_receptive_field_equals_formula(k, n_layers):
    torch.manual_seed(1)
    stack = _Stack(4, k, n_layers).double()
    rf = receptive_field(k, stack.dilations)
    t = rf + 10
    first, last = _dependency_span(stack, 4, t + 20, t)
    assert last == t  # nothing from the future
    assert t - first + 1 == rf


def test_changing_frame_t_never_changes_earlier_outputs():
    torch.manual_seed(2)
    stack = _Stack(6, 3, 4).eval()
    x = torch.randn(2, 6, 100)
    ref = stack(x)
    for t in (0, 17, 63, 99):
        y = x.clone()
        y[..., t] += torch.randn(2, 6) * 5
        out = stack(y)
        torch.testing.assert_close(out[..., :t], ref[..., :t], rtol=0, atol=0)
        assert not torch.allclose(out[..., t], ref[..., t])


def test_any_length_in_same_length_out():
    torch.manual_seed(3)
    stack = _Stack(5, 3, 6)
    gen = torch.Generator().manual_seed(3)
    for length in torch.randint(1, 300, (8,), generator=gen).tolist():
        assert stack(torch.randn(2, 5, length)).shape == (2, 5, length)


def test_right_padding_leaves_real_frames_unchanged():
    torch.manual_seed(4)
    stack = _Stack(5, 3, 4).eval()
    x = torch.randn(1, 5, 37)
    padded = torch.cat([x, torch.randn(1, 5, 50)], dim=-1)
    torch.testing.assert_close(stack(padded)[..., :37], stack(x))


def test_streaming_chunks_equal_whole_sequence():
    torch.manual_seed(5)
    block = GatedResidualBlock(4, 3, 8).eval()
    x = torch.randn(2, 4, 123)
    whole_res, whole_skip = block(x)
    cache, outs = None, []
    for chunk in torch.split(x, [1, 30, 7, 50, 35], dim=-1):
        (res, skip), cache = block.stream(chunk, cache)
        outs.append((res, skip))
    torch.testing.assert_close(torch.cat([o[0] for o in outs], -1), whole_res)
    torch.testing.assert_close(torch.cat([o[1] for o in outs], -1), whole_skip)
