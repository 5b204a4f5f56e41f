"""Run each preference pair's prompt through the model once, not twice.

TRL's ``DPOTrainer`` batches a pair as two rows, ``prompt + chosen`` and ``prompt + rejected``, right-padded
to the longest row of the batch, and runs the policy and the reference over every row. The prompt (often the
longer part: a system prompt and the conversation so far) is computed twice per pair per forward, and a short
rejected reply is padded to the chosen one's length. Here the batch is repacked into one row holding, per pair,
``prompt[:-1] | prompt[-1] + chosen | prompt[-1] + rejected``, with an attention mask that lets each reply see
its own prompt and itself only, and position ids that restart each reply where the prompt ends. The last prompt
token is repeated because its hidden state predicts the first token of both replies. Every completion token
then gets exactly the inputs it got in its own row, so the log-probabilities are the same up to float rounding
(the matrices have other shapes), and the LM head still scores only the completion positions.

The repacking sits on top of TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``): it calls TRL's
forward with the packed row and ``shift_labels``, and maps the per-token outputs back to the batch layout TRL
expects. Anything it does not recognise as a pair batch (other kwargs, left padding, prompts that differ between
the two rows, a reply truncated away, an attention kernel that takes no custom mask) goes to TRL's own forward
unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainers.cpu_logprob_head import log_probs_only

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

# Attention kernels that take a prepared 4D mask: sdpa a boolean one (True = attend), eager an additive float one.
_MASK_KINDS = {"sdpa": "bool", "eager": "float"}
# What TRL's DPO and PEFT pass; the others PEFT passes as None (anything else set sends the call to TRL's forward).
_PASSED_THROUGH = {"input_ids", "attention_mask", "use_cache", "return_dict"}
_UNSET_ALLOWED = {"inputs_embeds", "output_attentions", "output_hidden_states"}
# One packed row attends over all of its tokens: attention work and the mask grow with the square of its length,
# where TRL's rows grow with the square of one pair's. Past this many tokens (big batches of long pairs) the packed
# row's attention would outweigh what sharing the prompts saves, so such batches keep TRL's rows.
MAX_PACKED_TOKENS = 4096
_PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


@dataclass(frozen=True)
class PackedPairs:
    """A pair batch as one row: the tokens, their positions, who may attend to whom, and the way back."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    allowed: torch.Tensor  # (T, T) bool: query row may attend to key column
    shift_labels: torch.Tensor  # (1, T): the token each position's hidden state predicts, -100 where none
    source_index: torch.Tensor  # (2B, L - 1): packed position of each original output, T where there is none


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> PackedPairs | None:
    """Repack TRL's ``[chosen rows; rejected rows]`` batch, or None when it is not one this can share."""
    import torch

    rows, width = input_ids.shape
    if rows % 2 or rows == 0 or attention_mask.shape != input_ids.shape or labels.shape != input_ids.shape:
        return None
    half = rows // 2
    lengths = attention_mask.sum(dim=1).tolist()
    scored = labels != -100
    tokens: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    pair_of: list[torch.Tensor] = []
    branch_of: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    source_index = torch.full((rows, width - 1), -1, dtype=torch.long)
    offset = 0
    for pair in range(half):
        prompt_len = None
        for row in (pair, pair + half):
            length = int(lengths[row])
            if not bool(attention_mask[row, :length].all()):
                return None  # not right-padded
            first = int(scored[row].int().argmax()) if bool(scored[row].any()) else None
            if first is None or first == 0 or not bool(scored[row, first:length].all()):
                return None  # no reply left after truncation, no prompt, or a gap in the reply
            if bool(scored[row, length:].any()):
                return None
            if prompt_len is None:
                prompt_len = first
            elif first != prompt_len or not torch.equal(input_ids[pair, :first], input_ids[row, :first]):
                return None  # the two rows do not share their prompt
        assert prompt_len is not None
        shared = prompt_len - 1  # the last prompt token goes with each reply
        segments = [(pair, 0, 0, shared)] + [(row, branch, shared, int(lengths[row]))
                                             for branch, row in ((1, pair), (2, pair + half))]
        for row, branch, start, end in segments:
            count = end - start
            if count <= 0:
                continue
            tokens.append(input_ids[row, start:end])
            positions.append(torch.arange(start, end))
            pair_of.append(torch.full((count,), pair))
            branch_of.append(torch.full((count,), branch))
            target = torch.full((count,), -100, dtype=labels.dtype)
            if branch:
                target[:-1] = labels[row, start + 1:end]  # position t predicts token t + 1 of its own row
                source_index[row, start:end - 1] = torch.arange(offset, offset + count - 1)
            targets.append(target)
            offset += count
    if offset > MAX_PACKED_TOKENS:
        return None
    pair_ids, branches = torch.cat(pair_of), torch.cat(branch_of)
    order = torch.arange(offset)
    allowed = (
        (pair_ids[:, None] == pair_ids[None, :])
        & (order[None, :] <= order[:, None])
        & ((branches[None, :] == 0) | (branches[None, :] == branches[:, None]))
    )
    source_index[source_index < 0] = offset
    device = input_ids.device
    return PackedPairs(
        input_ids=torch.cat(tokens)[None].to(device),
        position_ids=torch.cat(positions)[None].to(device),
        allowed=allowed.to(device),
        shift_labels=torch.cat(targets)[None].to(device),
        source_index=source_index.to(device),
    )


def _attention_mask_4d(allowed: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    import torch

    if kind == "bool":
        return allowed[None, None]
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def _model_masks(config: PretrainedConfig, packed: PackedPairs, kind: str,
                 dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """The prepared mask(s) for the packed row, or None where the model's attention cannot be given them.

    Sliding-window layers (Gemma 3) see only the last ``sliding_window`` positions; such models take a mask per
    layer type. A model with a window but no per-type masks is only packed while no row is longer than it.
    """
    full = _attention_mask_4d(packed.allowed, kind, dtype)
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    if layer_types - {"full_attention", "sliding_attention"}:
        return None  # chunked or other attention patterns: left to the model's own masks
    if not window or int(packed.position_ids.max()) < window:
        return full  # no row reaches past the window: the window masks nothing
    if "sliding_attention" not in layer_types:
        return None
    pos = packed.position_ids[0]
    in_window = (pos[:, None] - pos[None, :]) < window
    return {"full_attention": full, "sliding_attention": _attention_mask_4d(packed.allowed & in_window, kind, dtype)}


def _unpack(value: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """Per-token outputs of the packed row, laid out as TRL's ``(2B, L - 1)`` batch (zero where unscored)."""
    import torch

    flat = torch.cat([value[0], value.new_zeros(1)])
    return flat[source_index]


def share_prompt_forward(model: PreTrainedModel, reference_pass: Callable[[], bool] | None = None) -> bool:
    """Wrap ``model``'s TRL fused-head forward (already added by ``DPOTrainer``) so pair batches share their prompt.

    ``reference_pass`` tells a call made for the reference log-probabilities (TRL keeps only ``log_probs`` of
    those): such calls compute the log-probabilities alone (``trainers.cpu_logprob_head.log_probs_only``), not the
    metrics' entropy, mean logit and top-1 over the whole vocabulary. Returns whether the wrapper is in place: not
    when the model's attention takes no custom mask, or the forward is not TRL's fused one.
    """
    kind = _MASK_KINDS.get(getattr(model.config, "_attn_implementation", None) or "")
    fused = model.forward
    if kind is None or "forward" not in vars(model):  # TRL's fused head is set on the instance
        return False
    if getattr(fused, "_shares_prompt", False):
        return True

    @functools.wraps(fused)
    def forward(*args: Any, fused_lm_head: bool = False, labels: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        if fused_lm_head and reference_pass is not None and reference_pass():
            with log_probs_only():
                return shared_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        return shared_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)

    def shared_forward(*args: Any, fused_lm_head: bool = False, labels: torch.Tensor | None = None,
                       **kwargs: Any) -> Any:
        packed = None
        plain = {key for key, value in kwargs.items() if not (key in _UNSET_ALLOWED and value is None)}
        if (fused_lm_head and labels is not None and not args and plain <= _PASSED_THROUGH
                and kwargs.get("input_ids") is not None
                and kwargs.get("attention_mask") is not None and kwargs["attention_mask"].dim() == 2):
            packed = pack_pairs(kwargs["input_ids"], kwargs["attention_mask"], labels)
        masks = _model_masks(model.config, packed, kind, model.dtype) if packed is not None else None
        if packed is None or masks is None:
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        outputs = fused(
            input_ids=packed.input_ids,
            position_ids=packed.position_ids,
            attention_mask=masks,
            shift_labels=packed.shift_labels,
            fused_lm_head=True,
            use_cache=False,
        )
        for name in _PER_TOKEN_FIELDS:
            value = getattr(outputs, name, None)
            if value is not None:
                setattr(outputs, name, _unpack(value, packed.source_index))
        return outputs

    forward._shares_prompt = True  # type: ignore[attr-defined]
    model.forward = forward
    return True
