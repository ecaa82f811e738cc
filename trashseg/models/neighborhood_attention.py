"""2-D (dilated) neighbourhood attention: natten's kernels on CUDA, a pure-PyTorch path elsewhere.

Neighbourhood attention (Hassani et al. 2023) lets each query attend to the kernel_size x
kernel_size keys around it; near the border the window shifts inwards so it always holds
kernel_size x kernel_size keys. With dilation d the feature map splits into d x d interleaved
sub-grids (positions congruent modulo d) and the neighbourhood is taken within the query's
sub-grid. natten 0.21 runs on CPU forward-only (its CPU backward raises NotImplementedError),
so CPU training uses `neighborhood_attention_reference`, which computes the same function.
"""

from __future__ import annotations

import torch


def neighborhood_indices(length: int, kernel_size: int, dilation: int, device=None) -> torch.Tensor:
    """(length, kernel_size) positions along one axis that each position attends to."""
    position = torch.arange(length, device=device)
    group = position % dilation
    index_in_group = position // dilation
    group_length = (length - group + dilation - 1) // dilation
    start = (index_in_group - kernel_size // 2).clamp(min=0)
    start = torch.minimum(start, group_length - kernel_size)
    offsets = torch.arange(kernel_size, device=device)
    return (start[:, None] + offsets[None, :]) * dilation + group[:, None]


def check_neighborhood(height: int, width: int, kernel_size: int, dilation: int) -> None:
    if kernel_size % 2 != 1 or kernel_size < 1 or dilation < 1:
        raise ValueError(
            f"neighbourhood attention needs an odd kernel_size >= 1 and dilation >= 1; "
            f"got kernel_size={kernel_size}, dilation={dilation}"
        )
    if min(height, width) < kernel_size * dilation:
        raise ValueError(
            f"feature map {height}x{width} is smaller than kernel_size*dilation = "
            f"{kernel_size}*{dilation}; pad it to at least {kernel_size * dilation} per side"
        )


def neighborhood_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """Neighbourhood attention on (batch, height, width, heads, head_dim) tensors, natten's
    layout, in differentiable PyTorch. Memory grows with kernel_size**2 times the key size."""
    batch, height, width, heads, head_dim = query.shape
    check_neighborhood(height, width, kernel_size, dilation)
    scale = head_dim**-0.5 if scale is None else scale
    rows = neighborhood_indices(height, kernel_size, dilation, query.device)  # (H, k)
    cols = neighborhood_indices(width, kernel_size, dilation, query.device)  # (W, k)

    def neighbours(tensor: torch.Tensor) -> torch.Tensor:
        # (B, H, W, h, d) -> (B, H, W, k*k, h, d): the keys/values around each query position.
        gathered = tensor[:, rows]  # (B, H, k, W, h, d)
        gathered = gathered[:, :, :, cols]  # (B, H, k, W, k, h, d)
        gathered = gathered.permute(0, 1, 3, 2, 4, 5, 6)  # (B, H, W, k, k, h, d)
        return gathered.reshape(batch, height, width, kernel_size * kernel_size, heads, -1)

    scores = torch.einsum("bxyhd,bxynhd->bxyhn", query * scale, neighbours(key))
    # Softmax in at least float32 so half-precision (AMP) logits do not overflow.
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    weights = scores.to(softmax_dtype).softmax(dim=-1).to(value.dtype)
    return torch.einsum("bxyhn,bxynhd->bxyhd", weights, neighbours(value))


def neighborhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
) -> torch.Tensor:
    """natten's fused kernels where they can train (CUDA), the reference path elsewhere."""
    if query.is_cuda:
        from natten.functional import na2d

        check_neighborhood(query.shape[1], query.shape[2], kernel_size, dilation)
        return na2d(query, key, value, kernel_size=kernel_size, dilation=dilation)
    return neighborhood_attention_reference(query, key, value, kernel_size, dilation)
