"""Reusable neural building blocks (the dilated causal convolution)."""

from recsys.modules.conv import (
    CausalConv1d,
    GatedResidualBlock,
    causal_padding,
    effective_kernel_size,
    pad_left,
    receptive_field,
)

__all__ = [
    "CausalConv1d",
    "GatedResidualBlock",
    "causal_padding",
    "effective_kernel_size",
    "pad_left",
    "receptive_field",
]
