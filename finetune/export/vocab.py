"""The tokenizer in GGUF form: vocabulary, merges or scores, special-token ids and the pre-tokenizer name.

llama.cpp re-implements each tokenizer rather than running the Hugging Face one, so the file must say which
algorithm (``gpt2`` byte-level BPE or ``llama`` SentencePiece) and, for BPE, which pre-tokenizer regex to use.
llama.cpp's own converter names the pre-tokenizer by hashing the ids a fixed text encodes to; we do the same,
so a tokenizer whose hash llama.cpp does not know is refused instead of silently split differently.
"""
from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

import gguf

from .checks import ExportRefused

__all__ = ["add_tokenizer", "bpe_pre_tokenizer"]

# llama.cpp convert_hf_to_gguf.py, get_vocab_base_pre(): the text whose token ids identify a BPE pre-tokenizer.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")

PRE_TOKENIZERS = {
    # Hashes from llama.cpp's get_vocab_base_pre() for the tokenizers this project trains, each matched there and
    # by hashing the real tokenizer (tests/test_export_families.py).
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / 2 / 2.5 / 3
}


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, tokenizer, vocab_size: int, add_bos: bool,
                  chat_template: str, sentencepiece_dirs: tuple[Path, ...] = ()) -> None:
    """Write the tokenizer keys of ``folder`` (a saved Hugging Face tokenizer) into ``writer``.

    Args:
        tokenizer: the same tokenizer, loaded (for the pre-tokenizer hash and the added tokens).
        vocab_size: rows of the embedding matrix; ids the tokenizer does not use are written as unused.
        add_bos: whether the tokenizer prepends BOS by itself (measured by the caller, not read from a flag).
        chat_template: the Jinja template that reproduces the trained prompt format.
        sentencepiece_dirs: folders to look for ``tokenizer.model`` in (the run, then its base model).

    Raises:
        ExportRefused: when llama.cpp would tokenize differently (unknown pre-tokenizer, no SentencePiece model).
    """
    model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    if model["type"] == "BPE" and not model.get("byte_fallback", False):
        _add_bpe(writer, tokenizer, vocab_size)
        load_merges = True
    else:
        _add_sentencepiece(writer, sentencepiece_dirs, vocab_size)
        load_merges = False
    special = gguf.SpecialVocab(folder, load_merges=load_merges, n_vocab=vocab_size)
    special.add_special_token = {}  # measured below instead of trusting tokenizer_config flags
    special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)  # answers end with EOS because they were trained to, not by the tokenizer


def bpe_pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer.

    Raises:
        ExportRefused: when llama.cpp does not know it (it would split text differently from training).
    """
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise ExportRefused(
            f"the tokenizer's BPE pre-tokenizer (hash {digest[:12]}…) is not one this exporter knows llama.cpp "
            f"runs ({', '.join(sorted(PRE_TOKENIZERS.values()))}); convert the merged model with llama.cpp's "
            "convert_hf_to_gguf.py, which lists every pre-tokenizer it supports")
    return PRE_TOKENIZERS[digest]


def _add_bpe(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """Byte-level BPE (SmolLM2, Llama 3, Qwen): tokens in id order, typed as llama.cpp's converter types them."""
    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(bpe_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def _add_sentencepiece(writer: gguf.GGUFWriter, folders: tuple[Path, ...], vocab_size: int) -> None:
    """SentencePiece (Llama 2, Mistral): pieces with their scores, which llama.cpp's tokenizer merges by.

    Only the original ``tokenizer.model`` carries the scores; a ``tokenizer.json`` alone does not.
    """
    folder = next((f for f in folders if (f / "tokenizer.model").exists()), None)
    if folder is None:
        raise ExportRefused(
            "this SentencePiece tokenizer has no tokenizer.model beside it (in the run or its base model); llama.cpp "
            "needs the piece scores it holds: copy the base model's tokenizer.model into the run folder")
    vocab = gguf.SentencePieceVocab(folder)
    tokens, scores, types = [], [], []
    for text, score, token_type in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(token_type)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
