"""Two ways to read an answer from the LLM: free greedy generation, and label scoring.

Generation is what the paper does: greedy decoding, then strict parsing (answers.py).
Label scoring is the fast classification path: greedy decoding restricted to the label set
(a trie over each label's answer tokens). Wherever free generation produced a valid label with
the label's own tokenisation, every step's unrestricted argmax was that label's next token, which
the restriction allows, so scoring returns the same label. Most label sets are decided by the first
token, so scoring usually costs one forward pass over the prompt instead of max_new_tokens steps.
"""

from __future__ import annotations

import inspect

import torch

from egmf_core.model import EGMF


@torch.no_grad()
def generate_answers(model: EGMF, batch: dict[str, torch.Tensor], tokenizer, max_new_tokens: int,
                     t_pseudo: torch.Tensor | None = None) -> list[str]:
    """Greedy generation from the left-padded prompt; returns the decoded new text per sample."""
    embeds, _ = model.prompt_embeds(batch, t_pseudo)
    out = generate_tokens(model.llm, embeds, batch["attention_mask"], tokenizer, max_new_tokens)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@torch.no_grad()
def generate_tokens(llm, embeds: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                    max_new_tokens: int) -> torch.Tensor:
    """Greedy generation from left-padded prompt embeddings (B, L, d): the new tokens (B, <= max_new)."""
    return llm.generate(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # with inputs_embeds only, generate returns just the new tokens


@torch.no_grad()
def score_labels(model: EGMF, batch: dict[str, torch.Tensor], label_answers: list[list[int]],
                 t_pseudo: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy decoding restricted to the label answers; returns the chosen class per sample (B,)."""
    embeds, _ = model.prompt_embeds(batch, t_pseudo)
    return score_label_embeds(model.llm, embeds, batch["attention_mask"], batch["position_ids"], label_answers)


@torch.no_grad()
def score_label_embeds(llm, embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                       label_answers: list[list[int]]) -> torch.Tensor:
    """:func:`score_labels` from left-padded prompt embeddings (B, L, d): the chosen class (B,)."""
    # When every label starts with its own token, the prompt pass decides: no cache is needed.
    needs_more = len({a[0] for a in label_answers}) < len(label_answers)
    out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                    use_cache=needs_more, logits_to_keep=1)
    logits = out.logits[:, -1, :]  # (B, V)
    cache = _cache_of(out) if needs_more else None
    cache_kwarg = _cache_kwarg(llm.get_base_model() if hasattr(llm, "get_base_model") else llm)
    B, K = embeds.shape[0], len(label_answers)
    device = logits.device
    alive = torch.ones(B, K, dtype=torch.bool, device=device)  # labels still consistent with the choice
    max_len = max(len(a) for a in label_answers)
    answers = torch.full((K, max_len), -1, dtype=torch.long, device=device)
    for k, a in enumerate(label_answers):
        answers[k, : len(a)] = torch.tensor(a, device=device)
    positions = position_ids[:, -1]
    for step in range(max_len):
        tok_k = answers[:, step].unsqueeze(0).expand(B, K)  # (B, K) each label's token at this step
        allowed = alive & (tok_k >= 0)
        # Score each alive label by the logit of its next token; pick the best token per sample.
        cand = torch.where(allowed, logits.gather(1, tok_k.clamp(min=0)), torch.full_like(tok_k, float("-inf"), dtype=logits.dtype))
        best_k = cand.argmax(dim=1)  # (B,)
        chosen = tok_k.gather(1, best_k.unsqueeze(1)).squeeze(1)  # (B,)
        alive = alive & (tok_k == chosen.unsqueeze(1))
        if bool((alive.sum(dim=1) <= 1).all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
        positions = positions + 1
        out = llm(
            input_ids=chosen.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions.unsqueeze(1),
            use_cache=True,
            logits_to_keep=1,
            **{cache_kwarg: cache},
        )
        logits, cache = out.logits[:, -1, :], _cache_of(out)
    return alive.float().argmax(dim=1)  # the single surviving label (first one on exact ties)


def _cache_of(out):
    """The KV cache of a model output: ``cache`` in transformers >= 5.24, ``past_key_values`` before."""
    return out.cache if hasattr(out, "cache") else out.past_key_values


def _cache_kwarg(lm) -> str:
    """The forward argument that takes a KV cache (renamed from ``past_key_values`` in 5.24)."""
    return "cache" if "cache" in inspect.signature(type(lm).forward).parameters else "past_key_values"
