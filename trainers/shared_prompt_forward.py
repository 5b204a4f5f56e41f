"""Run each prompt through the model once, not once per reply.

TRL's ``DPOTrainer`` batches a pair as two rows, ``prompt + chosen`` and ``prompt + rejected``, right-padded
to the longest row of the batch, and runs the policy and the reference over every row. The prompt (often the
longer part: a system prompt and the conversation so far) is computed twice per pair per forward, and a short
rejected reply is padded to the chosen one's length. Here the batch is repacked into one row holding, per pair,
``prompt[:-1] | prompt[-1] + chosen | prompt[-1] + rejected``, with an attention mask that lets each reply see
its own prompt and itself only, and position ids that restart each reply where the prompt ends. The last prompt
token is repeated because its hidden state predicts the first token of both replies. Every completion token
then gets exactly the inputs it got in its own row, so the log-probabilities are the same up to float rounding
(the matrices have other shapes), and the LM head still scores only the completion positions.

TRL's ``RLOOTrainer`` batches ``num_generations`` replies to each prompt as rows ``left-padded prompt + reply``
(``by="prompt"``): the rows with the same prompt are packed the same way, one packed row per prompt (one row for
all of them would make attention grow with the square of the whole batch), the positions kept as the original
columns so the left padding changes nothing.

The repacking sits on top of TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``): it calls TRL's
forward with the packed rows and ``shift_labels``, and maps the per-token outputs back to the batch layout TRL
expects. Anything it does not recognise (other kwargs, padding inside a row, a DPO pair whose two rows differ in
prompt, a reply truncated away, an attention kernel that takes no custom mask) goes to TRL's own forward
unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainers.cpu_logprob_head import log_probs_only
from trainers.model_source import base_model_of

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
class PackedRows:
    """A batch repacked so each prompt runs once: the tokens, their positions, who may attend to whom, and the
    way back. One row holds every group (DPO's pairs) or each group has its own (RLOO's replies to one prompt)."""

    input_ids: torch.Tensor  # (R, T)
    position_ids: torch.Tensor  # (R, T)
    allowed: torch.Tensor  # (R, T, T) bool: query position may attend to key position
    shift_labels: torch.Tensor  # (R, T): the token each position's hidden state predicts, -100 where none
    source_index: torch.Tensor  # (B, L - 1): flat packed index of each original output, R * T where there is none


@dataclass(frozen=True)
class _Span:
    start: int  # the row's first real token (after any left padding)
    first: int  # its first scored token: the reply starts here
    end: int  # one past its last real token


def _spans(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> list[_Span] | None:
    """Each row's prompt and reply, or None when a row is not ``pad* prompt reply pad*`` with the reply scored."""

    scored = labels != -100
    spans = []
    for row in range(input_ids.shape[0]):
        real = attention_mask[row].nonzero()
        if real.numel() == 0:
            return None
        start, end = int(real[0]), int(real[-1]) + 1
        if not bool(attention_mask[row, start:end].all()):
            return None  # padding inside the row
        first = int(scored[row].int().argmax()) if bool(scored[row].any()) else None
        if first is None or first <= start or not bool(scored[row, first:end].all()):
            return None  # no reply left after truncation, no prompt, or a gap in the reply
        if bool(scored[row, end:].any()):
            return None
        spans.append(_Span(start, first, end))
    return spans


def _groups(input_ids: torch.Tensor, spans: list[_Span], by: str) -> list[list[int]] | None:
    """Rows that share one prompt: TRL's DPO pairs (row p and row p + B/2, which must share it), or every row
    with the same prompt tokens at the same place (RLOO's replies to one prompt, wherever the shuffle put them)."""
    import torch

    rows = len(spans)
    if by == "pairs":
        if rows % 2:
            return None
        half = rows // 2
        groups = [[pair, pair + half] for pair in range(half)]
    else:
        keyed: dict[tuple[int, ...], list[int]] = {}
        for row, span in enumerate(spans):
            keyed.setdefault((span.start, span.first, *input_ids[row, span.start:span.first].tolist()), []).append(row)
        groups = list(keyed.values())
    for group in groups:
        lead = spans[group[0]]
        for row in group[1:]:
            span = spans[row]
            if (span.start, span.first) != (lead.start, lead.first) or not torch.equal(
                    input_ids[group[0], lead.start:lead.first], input_ids[row, span.start:span.first]):
                return None  # the rows do not share their prompt
    return groups


def pack_shared_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                        by: str = "pairs") -> PackedRows | None:
    """Repack a batch so each prompt runs once, or None when it is not one this can share.

    ``by="pairs"``: TRL's DPO ``[chosen rows; rejected rows]`` batch, all pairs in one row. ``by="prompt"``: rows
    with the same prompt grouped (TRL's RLOO ``num_generations`` replies to each prompt), one row per prompt.
    Positions are the original columns, so left padding (RLOO's prompts) changes nothing the model sees.
    """
    import torch

    rows, width = input_ids.shape
    if rows == 0 or attention_mask.shape != input_ids.shape or labels.shape != input_ids.shape:
        return None
    spans = _spans(input_ids, attention_mask, labels)
    groups = _groups(input_ids, spans, by) if spans is not None else None
    if groups is None:
        return None
    packs = [groups] if by == "pairs" else [[group] for group in groups]
    built = []  # per packed row: tokens, positions, group ids, branch ids, targets
    source: list[tuple[int, int, int, int, int]] = []  # (original row, first column, last column, packed row, offset)
    for pack_row, pack in enumerate(packs):
        tokens, positions, group_of, branch_of, targets = [], [], [], [], []
        offset = 0
        for group_id, group in enumerate(pack):
            lead = spans[group[0]]
            shared = lead.first - 1  # the last prompt token goes with each reply
            segments = [(group[0], 0, lead.start, shared)] + [
                (row, branch, shared, spans[row].end) for branch, row in enumerate(group, start=1)]
            for row, branch, start, end in segments:
                count = end - start
                if count <= 0:
                    continue
                tokens.append(input_ids[row, start:end])
                positions.append(torch.arange(start, end))
                group_of.append(torch.full((count,), group_id))
                branch_of.append(torch.full((count,), branch))
                target = torch.full((count,), -100, dtype=labels.dtype)
                if branch:
                    target[:-1] = labels[row, start + 1:end]  # position t predicts token t + 1 of its own row
                    source.append((row, start, end - 1, pack_row, offset))
                targets.append(target)
                offset += count
        if offset > MAX_PACKED_TOKENS:
            return None
        built.append([torch.cat(part) for part in (tokens, positions, group_of, branch_of, targets)])
    length = max(len(part[0]) for part in built)
    device = input_ids.device
    ids = torch.zeros((len(built), length), dtype=input_ids.dtype)
    pos = torch.zeros((len(built), length), dtype=torch.long)
    shift = torch.full((len(built), length), -100, dtype=labels.dtype)
    allowed = torch.zeros((len(built), length, length), dtype=torch.bool)
    order = torch.arange(length)
    for r, (tok, position, group_ids, branches, target) in enumerate(built):
        n = len(tok)
        ids[r, :n], pos[r, :n], shift[r, :n] = tok, position, target
        allowed[r, :n, :n] = (
            (group_ids[:, None] == group_ids[None, :])
            & (order[None, :n] <= order[:n, None])
            & ((branches[None, :] == 0) | (branches[None, :] == branches[:, None]))
        )
        allowed[r, order[n:], order[n:]] = True  # padding attends to itself only (no empty softmax row)
    source_index = torch.full((rows, width - 1), len(built) * length, dtype=torch.long)
    for row, first, last, pack_row, offset in source:
        source_index[row, first:last] = torch.arange(offset, offset + last - first) + pack_row * length
    return PackedRows(input_ids=ids.to(device), position_ids=pos.to(device), allowed=allowed.to(device),
                      shift_labels=shift.to(device), source_index=source_index.to(device))


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> PackedRows | None:
    """Repack TRL's ``[chosen rows; rejected rows]`` batch into one row, or None when it is not one this can
    share."""
    return pack_shared_prompts(input_ids, attention_mask, labels, by="pairs")


def mask_kind(config: PretrainedConfig) -> str | None:
    """The kind of prepared mask the model's attention takes ("bool", "float"), or None when it takes none."""
    return _MASK_KINDS.get(getattr(config, "_attn_implementation", None) or "")


def _attention_mask_4d(allowed: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    import torch

    if kind == "bool":
        return allowed[:, None]
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _model_masks(config: PretrainedConfig, packed: PackedRows, kind: str,
                 dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """The prepared mask(s) for the packed rows (their keys are their own tokens), or None (see ``prepared_masks``)."""
    return prepared_masks(config, packed.allowed, packed.position_ids, packed.position_ids, kind, dtype)


def prepared_masks(config: PretrainedConfig, allowed: torch.Tensor, query_positions: torch.Tensor,
                   key_positions: torch.Tensor, kind: str,
                   dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """The 4D mask(s) to hand the model for ``allowed`` ((R, Q, K) bool: query may attend to key), the queries and
    keys at positions ``query_positions`` (R, Q) and ``key_positions`` (R, K) (keys may include cached ones), or
    None where the model's attention cannot be given them. ``kind``: "bool" (sdpa) or "float" (eager).

    Sliding-window layers (Gemma 3) see only the last ``sliding_window`` positions; such models take a mask per
    layer type. A model with a window but no per-type masks is only given one while no position reaches it.
    """
    full = _attention_mask_4d(allowed, kind, dtype)
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    if layer_types - {"full_attention", "sliding_attention"}:
        return None  # chunked or other attention patterns: left to the model's own masks
    if not window or int(query_positions.max()) < window:
        return full  # no query reaches past the window: the window masks nothing
    if "sliding_attention" not in layer_types:
        return None
    in_window = (query_positions[:, :, None] - key_positions[:, None, :]) < window
    return {"full_attention": full, "sliding_attention": _attention_mask_4d(allowed & in_window, kind, dtype)}


def _unpack(value: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """Per-token outputs of the packed rows, laid out as TRL's ``(B, L - 1)`` batch (zero where unscored)."""
    import torch

    flat = torch.cat([value.reshape(-1), value.new_zeros(1)])
    return flat[source_index]


def share_prompt_forward(model: PreTrainedModel, reference_pass: Callable[[], bool] | None = None,
                         by: str = "pairs") -> bool:
    """Wrap ``model``'s TRL fused-head forward (already added by TRL's trainer; ``model`` or the model under its
    PEFT wrapper) so replies share their prompt:
    ``by="pairs"`` for ``DPOTrainer``'s pair batches, ``by="prompt"`` for ``RLOOTrainer``'s groups.

    ``reference_pass`` tells a call made for the reference log-probabilities (TRL keeps only ``log_probs`` of
    those): such calls compute the log-probabilities alone (``trainers.cpu_logprob_head.log_probs_only``), not the
    metrics' entropy, mean logit and top-1 over the whole vocabulary. Returns whether the wrapper is in place: not
    when the model's attention takes no custom mask, or the forward is not TRL's fused one.
    """
    model = base_model_of(model)  # TRL adds its fused head under a PEFT wrapper
    kind = mask_kind(model.config)
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
            packed = pack_shared_prompts(kwargs["input_ids"], kwargs["attention_mask"], labels, by=by)
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


def pack_reward_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pad_token_id: int | None) -> tuple[PackedRows, torch.Tensor] | None:
    """TRL's ``RewardTrainer`` batch (``[chosen rows; rejected rows]``, right-padded, no labels) as one row with
    each pair's common prefix once, and the packed position of the token each row's score is read at (the
    sequence-classification head's own choice: the row's last token that is not the pad id); None when it cannot
    be shared (the rows share nothing, or that token lies inside the shared prefix)."""
    import torch

    rows = input_ids.shape[0]
    if rows % 2 or rows == 0 or pad_token_id is None:
        return None
    half = rows // 2
    ends = attention_mask.sum(dim=1).tolist()
    labels = torch.full_like(input_ids, -100)
    firsts = [0] * rows  # where each row's own part (what the pair does not share) starts
    for pair in range(half):
        n = int(min(ends[pair], ends[pair + half]))
        differs = (input_ids[pair, :n] != input_ids[pair + half, :n]).nonzero()
        common = int(differs[0]) if differs.numel() else n
        for row in (pair, pair + half):
            labels[row, common:ends[row]] = input_ids[row, common:ends[row]]  # "the reply", for the packing
            firsts[row] = common
    packed = pack_shared_prompts(input_ids, attention_mask, labels, by="pairs")
    if packed is None:
        return None
    positions = []
    for row in range(rows):
        kept = (input_ids[row] != pad_token_id).nonzero()
        read = int(kept[-1]) if kept.numel() else 0  # where the classification head reads this row's score
        if read < firsts[row] or read >= ends[row]:
            return None  # the score would be read inside the shared prefix or the padding
        positions.append(int(packed.source_index[row, read - 1]) + 1)  # the token after the one predicting it
    return packed, torch.tensor(positions, device=input_ids.device)


def share_prompt_in_reward_model(model: PreTrainedModel) -> bool:
    """Wrap a sequence-classification model's forward (``model`` or the one under its PEFT wrapper; transformers' generic one: ``model.<base_model_prefix>``
    then ``model.score``, read at the last non-pad token) so TRL's ``RewardTrainer`` pair batches run each pair's
    common prefix once. The scores are the model's own for each row (same inputs per token, float rounding
    aside). Returns whether the wrapper is in place: not when the model's attention takes no custom mask or it
    has no ``score`` head."""
    model = base_model_of(model)  # PEFT's LoRA model calls the wrapped model's forward attribute
    kind = mask_kind(model.config)
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    original = model.forward
    if kind is None or decoder is None or not hasattr(model, "score"):
        return False
    if getattr(original, "_shares_prompt", False):
        return True

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        plain = {key for key, value in kwargs.items() if value is not None}
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        found = None
        if (not args and plain <= _PASSED_THROUGH
                and ids is not None and mask is not None and mask.dim() == 2):
            found = pack_reward_pairs(ids, mask, model.config.get_text_config().pad_token_id)
        masks = _model_masks(model.config, found[0], kind, model.dtype) if found is not None else None
        if found is None or masks is None:
            return original(*args, **kwargs)
        packed, reads = found
        hidden = decoder(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=masks,
                         use_cache=False).last_hidden_state
        return SequenceClassifierOutputWithPast(logits=model.score(hidden.reshape(-1, hidden.shape[-1])[reads]))

    forward._shares_prompt = True  # type: ignore[attr-defined]
    model.forward = forward
    return True
