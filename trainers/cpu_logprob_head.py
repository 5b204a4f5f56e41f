"""The LM head's per-token log-probabilities on CPU in a few whole-tile PyTorch ops, not TRL's per-element fold.

TRL 1.16's fused LM head (``trl.kernels.ChunkedLogProbFunction``) projects the scored hidden states through the
vocabulary in tiles and folds each tile into online-logsumexp statistics. On CUDA the fold is one Triton kernel;
elsewhere it is ``_forward_tile`` / ``_backward_tile``: a dozen PyTorch passes over every tile (an ``arange`` mask
per tile for the top-1 test, a ``zeros_like`` and a one-hot comparison per tile in the backward). With Gemma's
262,144-token vocabulary those passes, not the matrix products, were most of a DPO step on 2 cores (measured with
``bench/dpo_profile.py``: TRL's forward 3.5 s and forward + backward 7.2 s of CPU time for 115 scored tokens,
where the bf16 product itself takes 0.24 s).

Here each vocabulary tile costs one product and a few reductions PyTorch vectorises (``logsumexp``, ``max`` with
its index, the softmax for the entropy); tiles are combined exactly as a log-sum-exp of their own. The backward
recomputes each tile (as TRL's does) and adds the one-hot part at the target index only. The numbers are TRL's:
same compute dtype (the autocast dtype, else the hidden states'), the gradient tile rounded to it and the gradient
products accumulated in float32, same temperature, logit scale and soft-capping; only the order of float
additions differs (log-probs equal to ~1e-6). ``is_top1`` is "the target is the first index of the row's
maximum", which is what TRL's two running maxima compute.

``enable_cpu_logprob_head`` puts it behind TRL's private name for CPU tensors only; CUDA/XPU keep TRL's kernel.
Inside ``log_probs_only()`` (DPO's reference pass, whose entropy, mean logit and top-1 TRL computes and drops) either
function computes the log-probabilities alone.
If TRL renames the private names, nothing is patched and TRL's own fold runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
# Rows per product: a float32 tile of 1024 rows x 32,768 columns is 128 MB, bounded whatever the batch.
TOKEN_CHUNK = 1024

_patched = False
# Set while a pass needs the log-probabilities alone (DPO's reference pass): the metrics' extra statistics
# (entropy, mean logit, top-1) are then not computed; what is returned for them is None.
_log_probs_only: contextvars.ContextVar[bool] = contextvars.ContextVar("log_probs_only", default=False)


@contextlib.contextmanager
def log_probs_only(only: bool = True) -> Iterator[None]:
    """Within this block the fused LM head computes the per-token log-probabilities and nothing else
    (``only=False``: every output again, for one pass inside an outer ``log_probs_only()``)."""
    token = _log_probs_only.set(only)
    try:
        yield
    finally:
        _log_probs_only.reset(token)


def _transformed(tile: torch.Tensor, logit_scale: float, softcap: float | None, inv_t: float) -> torch.Tensor:
    """The tile as TRL's kernel sees it: float32, scaled, soft-capped, divided by the temperature."""
    import torch

    z = tile.float()
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if inv_t != 1.0:
        z = z * inv_t
    return z


def _logsumexp_parts(parts: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    import torch

    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _forward_rows(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                  chunk_size: int, transform: tuple[float, float | None, float], outputs: tuple[str, ...],
                  compute_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-row statistics over the whole vocabulary, a vocabulary tile at a time."""
    import torch

    rows, vocab = hidden.shape[0], weight.shape[0]
    h = hidden.to(compute_dtype)
    lse_parts: list[torch.Tensor] = []
    weighted_z: list[torch.Tensor] = []  # per tile: sum of softmax(tile) * tile, for the entropy
    sq_parts: list[torch.Tensor] = []
    z_sum = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    best = torch.full((rows,), -math.inf, dtype=torch.float32, device=hidden.device)
    best_index = torch.full((rows,), -1, dtype=torch.long, device=hidden.device)
    target_logit = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    for start in range(0, vocab, chunk_size):
        end = min(start + chunk_size, vocab)
        tile = torch.mm(h, weight[start:end].to(compute_dtype).t())
        if bias is not None:
            tile.add_(bias[start:end].to(compute_dtype))
        z = _transformed(tile, *transform)
        del tile
        lse = torch.logsumexp(z, dim=-1)
        lse_parts.append(lse)
        if "entropy" in outputs:
            weighted_z.append((torch.softmax(z, dim=-1) * z).sum(-1))
        if "log_sum_sq_probs" in outputs:
            sq_parts.append(torch.logsumexp(2 * z, dim=-1))
        if "mean_logits" in outputs:
            z_sum += z.sum(-1)
        if "is_top1" in outputs:
            value, index = z.max(dim=-1)  # the first index of the tile's maximum
            later_wins = value > best  # a tie keeps the earlier tile's index
            best = torch.where(later_wins, value, best)
            best_index = torch.where(later_wins, index + start, best_index)
        local = targets - start
        in_tile = (local >= 0) & (local < end - start)
        picked = z.gather(-1, local.clamp(0, end - start - 1).unsqueeze(-1)).squeeze(-1)
        target_logit = torch.where(in_tile, picked, target_logit)
    log_z = _logsumexp_parts(lse_parts)
    stats = {"log_z": log_z, "log_probs": target_logit - log_z}
    if "entropy" in outputs:
        shares = torch.exp(torch.stack(lse_parts, dim=-1) - log_z.unsqueeze(-1))
        stats["entropy"] = log_z - (shares * torch.stack(weighted_z, dim=-1)).sum(-1)
    if "log_sum_sq_probs" in outputs:
        stats["log_sum_sq_probs"] = _logsumexp_parts(sq_parts) - 2 * log_z
    if "mean_logits" in outputs:
        stats["mean_logits"] = z_sum / vocab
    if "is_top1" in outputs:
        stats["is_top1"] = best_index == targets
    return stats


def _cpu_function() -> type:
    import torch

    class CpuChunkedLogProbFunction(torch.autograd.Function):
        """``trl.kernels.ChunkedLogProbFunction``'s signature and outputs, computed in whole-tile ops."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size,  # noqa: ANN001, ANN205, PLR0913
                    final_logit_softcapping=None, logit_scale=1.0, outputs=OPTIONAL_OUTPUTS):
            ctx.set_materialize_grads(False)
            compute_dtype = _compute_dtype(hidden)
            transform = (logit_scale, final_logit_softcapping, 1 / temperature)
            parts = [
                _forward_rows(hidden[s:s + TOKEN_CHUNK], weight, bias, targets[s:s + TOKEN_CHUNK], chunk_size,
                              transform, outputs, compute_dtype)
                for s in range(0, max(hidden.shape[0], 1), TOKEN_CHUNK)
            ]
            joined = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
            log_z = joined["log_z"]
            entropy = joined.get("entropy")
            ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
            ctx.compute_dtype, ctx.chunk_size, ctx.transform = compute_dtype, chunk_size, transform
            extras = [joined.get(name) for name in ("log_sum_sq_probs", "mean_logits", "is_top1")]
            ctx.mark_non_differentiable(*(x for x in extras if x is not None))
            return (joined["log_probs"], entropy, *extras)

        @staticmethod
        def backward(ctx, grad_logprobs, grad_entropy, *_):  # noqa: ANN001, ANN205
            hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
            logit_scale, softcap, inv_t = ctx.transform
            needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
            grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32) if needs_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if needs_weight else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32) if needs_bias else None
            vocab = weight.shape[0]
            for s in range(0, hidden.shape[0], TOKEN_CHUNK):
                h = hidden[s:s + TOKEN_CHUNK].to(ctx.compute_dtype)
                rows = torch.arange(h.shape[0])
                g_lp = grad_logprobs[s:s + TOKEN_CHUNK].float() if grad_logprobs is not None else None
                g_ent = grad_entropy[s:s + TOKEN_CHUNK].float() if grad_entropy is not None else None
                for start in range(0, vocab, ctx.chunk_size):
                    end = min(start + ctx.chunk_size, vocab)
                    w = weight[start:end].to(ctx.compute_dtype)
                    tile = torch.mm(h, w.t())
                    if bias is not None:
                        tile.add_(bias[start:end].to(ctx.compute_dtype))
                    y = tile.float() * logit_scale
                    del tile
                    if softcap is not None:
                        capped = torch.tanh(y / softcap)
                        z = softcap * capped * inv_t
                    else:
                        z = y * inv_t if inv_t != 1.0 else y
                    log_p = z - log_z[s:s + TOKEN_CHUNK].unsqueeze(-1)
                    p = torch.exp(log_p)
                    if g_lp is None:
                        grad = torch.zeros_like(p)
                    else:
                        grad = p * -g_lp.unsqueeze(-1)  # d log p_target / d z = onehot - p
                        local = targets[s:s + TOKEN_CHUNK] - start
                        hit = (local >= 0) & (local < end - start)
                        grad[rows[hit], local[hit]] += g_lp[hit]
                    if g_ent is not None:
                        grad -= g_ent.unsqueeze(-1) * p * (log_p + entropy[s:s + TOKEN_CHUNK].unsqueeze(-1))
                    del p, log_p
                    if inv_t != 1.0:
                        grad *= inv_t
                    if softcap is not None:
                        grad *= 1 - capped * capped
                    if logit_scale != 1.0:
                        grad *= logit_scale
                    # TRL writes the gradient into the compute-dtype tile and accumulates its products in float32.
                    grad = grad.to(ctx.compute_dtype).float()
                    if grad_hidden is not None:
                        grad_hidden[s:s + TOKEN_CHUNK].addmm_(grad, w.float())
                    if grad_weight is not None:
                        grad_weight[start:end].addmm_(grad.t(), h.float())
                    if grad_bias is not None:
                        grad_bias[start:end] += grad.sum(0)
            return (
                grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
                grad_weight.to(weight.dtype) if grad_weight is not None else None,
                grad_bias.to(bias.dtype) if grad_bias is not None else None,
                None, None, None, None, None, None,
            )

    return CpuChunkedLogProbFunction


def cpu_logprob_function() -> type:
    """The autograd function (built on first use, so importing this module does not import torch)."""
    global _cpu_function_class
    if _cpu_function_class is None:
        _cpu_function_class = _cpu_function()
    return _cpu_function_class


_cpu_function_class: type | None = None


def enable_cpu_logprob_head() -> bool:
    """Route TRL's fused LM head to the whole-tile function for CPU tensors; return whether it is in place."""
    global _patched
    if _patched:
        return True
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return False
    trl_function = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if trl_function is None or not hasattr(trl_function, "apply"):
        return False
    cpu_function = cpu_logprob_function()

    class ByDevice:
        """TRL's function on accelerators, the whole-tile one on CPU."""

        @staticmethod
        def apply(hidden, *args):  # noqa: ANN001, ANN002, ANN205 - TRL's positional call
            chosen = cpu_function if hidden.device.type == "cpu" else trl_function
            if _log_probs_only.get() and len(args) == 8:  # the last argument is the tuple of outputs
                args = (*args[:7], ("log_probs",))
            return chosen.apply(hidden, *args)

    trl_utils._ChunkedLogProbFunction = ByDevice
    _patched = True
    return True
