"""The decoder product ``f W_dec`` that pays for the features that fire.

At the L0 of a trained SAE (tens of d_sae's thousands) almost every code is zero, yet the dense
product and its two gradients (``grad W_dec = f^T g``, ``grad f = g W_dec^T``) each cost
``2 B d_sae d_in`` FLOPs. Over the active entries only (``f`` as a CSR matrix: the forward and
``grad W_dec`` as sparse-dense products, ``grad f`` sampled at the active entries), each costs
``2 nnz d_in``: the gradient reaches only the active entries of ``f`` and the decoder rows
that fired. That is the exact gradient of every variant's loss wherever the codes come from an
activation whose derivative is zero where its output is zero (ReLU, JumpReLU-style gates, the
variants here), since autograd would multiply the dense ``grad f`` there by zero anyway.

:func:`sampled_gram` is the same idea for a Gram matrix ``W W^T`` read at a few pairs only (the
cubic orthogonality penalty's co-firing features).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

SPARSE_DECODE_CROSSOVER = 0.02
"""The code density below which :func:`sparse_decode` beats the dense product, measured on this
project's CI machine (2 CPU cores) by ``sae-variants benchmark --sparse-decode``."""


def csr_matrix(
    rows: Int[Tensor, " nnz"], cols: Int[Tensor, " nnz"], values: Tensor, shape: tuple[int, int]
) -> Tensor:
    """The CSR matrix of ``shape`` holding ``values`` at (``rows``, ``cols``), rows sorted."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, dim=0)])
    with warnings.catch_warnings():  # "CSR support is in beta": the products used here are not
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


class _SparseDecode(torch.autograd.Function):
    """``f @ W`` over the non-zero entries of ``f``: forward and ``grad W = f^T g`` as CSR
    products, ``grad f = (g W^T)`` sampled at the non-zero entries only."""

    @staticmethod
    def forward(ctx: Any, codes: Tensor, W_dec: Tensor) -> Tensor:
        rows, cols = codes.nonzero(as_tuple=True)  # row-major order
        values = codes[rows, cols]
        ctx.save_for_backward(rows, cols, values, W_dec)
        ctx.shape = codes.shape
        return csr_matrix(rows, cols, values, codes.shape) @ W_dec

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        rows, cols, values, W_dec = ctx.saved_tensors
        grad = grad.contiguous()
        grad_codes = grad_W = None
        if ctx.needs_input_grad[0]:
            pattern = csr_matrix(rows, cols, torch.zeros_like(values), ctx.shape)
            sampled = torch.sparse.sampled_addmm(pattern, grad, W_dec.t(), beta=0.0)
            grad_codes = grad.new_zeros(ctx.shape)
            grad_codes[rows, cols] = sampled.values()
        if ctx.needs_input_grad[1]:
            order = torch.argsort(cols, stable=True)  # the transpose, rows sorted
            transposed = csr_matrix(cols[order], rows[order], values[order], ctx.shape[::-1])
            grad_W = transposed @ grad
        return grad_codes, grad_W


class _SampledGram(torch.autograd.Function):
    """``(W W^T)[rows, cols]``: the forward sampled at the pairs, ``grad W = G W + G^T W`` with
    ``G`` the CSR matrix of the pairs' gradients (autograd's own backward of
    ``torch.sparse.sampled_addmm`` is four times slower here)."""

    @staticmethod
    def forward(ctx: Any, W: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        shape = (W.shape[0], W.shape[0])
        pattern = csr_matrix(rows, cols, W.new_zeros(rows.shape[0]), shape)
        ctx.save_for_backward(W, rows, cols)
        return torch.sparse.sampled_addmm(pattern, W, W.t(), beta=0.0).values()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        W, rows, cols = ctx.saved_tensors
        shape = (W.shape[0], W.shape[0])
        order = torch.argsort(cols, stable=True)  # the transpose, rows sorted
        transposed = csr_matrix(cols[order], rows[order], grad[order], shape)
        return torch.addmm(transposed @ W, csr_matrix(rows, cols, grad, shape), W), None, None


def sampled_gram(
    W: Float[Tensor, "n d"], rows: Int[Tensor, " pairs"], cols: Int[Tensor, " pairs"]
) -> Float[Tensor, " pairs"]:
    """``(W W^T)[rows[k], cols[k]]`` for pairs sorted by ``rows`` (then any order), without the
    ``n x n`` product: ``2 pairs d`` FLOPs forward and ``4 pairs d`` backward. Pairs must be
    distinct."""
    return _SampledGram.apply(W, rows, cols)


def sparse_decode(
    codes: Float[Tensor, "rows d_sae"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "rows d_in"]:
    """``codes @ W_dec`` over the non-zero codes only: the gradient reaches those codes and the
    decoder rows that fired. Costs one pass over ``codes`` to find them, and a host sync."""
    return _SparseDecode.apply(codes, W_dec)


def decode_product(
    codes: Float[Tensor, "*batch d_sae"], W_dec: Float[Tensor, "d_sae d_in"], max_density: float
) -> Float[Tensor, "*batch d_in"]:
    """``codes @ W_dec``: by :func:`sparse_decode` when at most ``max_density`` of the codes are
    non-zero (the measured crossover below which it is faster), densely otherwise (early in
    training, codes are dense)."""
    dense = (
        max_density <= 0
        or codes.numel() == 0
        or codes.dtype not in (torch.float32, torch.float64)
        or torch.is_autocast_enabled(codes.device.type)
    )
    if dense:  # (CSR products are not available in reduced precision everywhere)
        return codes @ W_dec
    flat = codes.reshape(-1, codes.shape[-1])
    density = float(torch.count_nonzero(flat)) / flat.numel()
    if density > max_density:
        return codes @ W_dec
    return sparse_decode(flat, W_dec).reshape(*codes.shape[:-1], W_dec.shape[1])
