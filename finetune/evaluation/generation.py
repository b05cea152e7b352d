"""Batched generation with a run's own template (left padding, greedy by default)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..conversation import prompt_messages
from ..data.tokenize import Encoder
from ..training import PaddingCollator

__all__ = ["generate", "generation_settings", "prompt_messages"]


def generation_settings(tokenizer, encoder: Encoder, max_new_tokens: int, **generate_kwargs) -> dict:
    """``generate``'s keyword arguments for answers in the trained format: greedy unless ``do_sample``, ending at
    the template's end-of-turn tokens (Gemma's ``<end_of_turn>``, not only EOS)."""
    kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": encoder.stop_ids or tokenizer.eos_token_id, **generate_kwargs}
    if not kwargs["do_sample"]:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


@torch.no_grad()
def generate(model, tokenizer, template, conversations: Sequence[list[dict]], max_new_tokens: int = 64,
             batch_size: int = 8, progress: bool = True, tools: Optional[Sequence] = None,
             **generate_kwargs) -> list[str]:
    """Answer each conversation (ending with a user turn) with the template the model was trained on.

    Args:
        tools: each conversation's tool schemas (a list, JSON text or None), rendered into its prompt as in training.

    Returns:
        The generated answers, decoded without special tokens and stripped.
    """
    encoder = Encoder(tokenizer, template, max_length=10**9)
    collate = PaddingCollator(tokenizer.pad_token_id, padding_side="left")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    kwargs = generation_settings(tokenizer, encoder, max_new_tokens, **generate_kwargs)
    answers = []
    starts = range(0, len(conversations), batch_size)
    for start in tqdm(starts, desc="Generating", disable=not progress or len(starts) < 2):
        schemas = tools[start:start + batch_size] if tools is not None else [None] * batch_size
        prompts = [{"input_ids": encoder.encode_prompt(c, t)}
                   for c, t in zip(conversations[start:start + batch_size], schemas)]
        batch = {k: v.to(device) for k, v in collate(prompts).items()}
        output = model.generate(**batch, **kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    model.train(was_training)
    return answers
