"""ChatGLM2-6B's tokenizer, rewritten for transformers 5.x without ``trust_remote_code``.

ChatGLM2 ships a remote-code tokenizer that no longer runs on transformers 5.x (it sets attributes before the base
``__init__`` and overrides ``_pad`` with an outdated signature). This module reproduces its behaviour on the 5.x
``PreTrainedTokenizer`` (``PythonBackend``) base:

* a sentencepiece model (``tokenizer.model``) with ``<unk>`` = 0 (also the pad token), ``<s>`` = 1 (never added)
  and ``</s>`` = 2 (EOS);
* five special tokens ``[MASK] [gMASK] [sMASK] sop eop`` numbered right after the sentencepiece pieces;
* every encoded prompt starts with ``[gMASK] sop``; a pair ends with EOS;
* padding on the left, as ChatGLM2's generation code expects.

``sop`` and ``eop`` are ordinary letters inside words ("people" contains "eop"), so in text they are only read as
special tokens right after a bracketed mask token (``[gMASK]sop``), never inside other text.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import sentencepiece as spm
from transformers import AddedToken, PreTrainedTokenizer

from ..errors import UsageError

__all__ = ["ChatGLM2Tokenizer", "GLM_SPECIAL_TOKENS", "is_chatglm2_tokenizer_folder", "load_chatglm2_tokenizer"]

logger = logging.getLogger(__name__)

GLM_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
"""ChatGLM2's own special tokens, in id order after the sentencepiece vocabulary."""
_WORD_LIKE = ("sop", "eop")
# Python's look-behind needs a fixed width; every mask token ends with "MASK]".
_SOP_EOP = re.compile(r"(?<=MASK\])(sop|eop)")
_SP_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2}
_ALIAS = "<sp:{}>"
"""How a sentencepiece piece spelled like a GLM token ("eop" inside "people") is named, so it keeps its own id."""


class ChatGLM2Tokenizer(PreTrainedTokenizer):
    """ChatGLM2-6B's sentencepiece tokenizer with its ``[gMASK] sop`` prompt prefix.

    Args:
        vocab_file: Path of the sentencepiece model (``tokenizer.model``).
        padding_side: ``"left"`` like the original, so batched generation continues right after each prompt.
        clean_up_tokenization_spaces: Off, like the original: cleanup would change Chinese punctuation spacing.
        **kwargs: Passed to ``PreTrainedTokenizer`` (saved fields such as ``added_tokens_decoder`` come back here).
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"

    def __init__(self, vocab_file: str, unk_token: str = "<unk>", bos_token: str = "<s>", eos_token: str = "</s>",
                 pad_token: str = "<unk>", padding_side: str = "left", clean_up_tokenization_spaces: bool = False,
                 **kwargs):
        # The base __init__ calls get_vocab() and _add_tokens(), so the sentencepiece model must exist first.
        self.vocab_file = str(vocab_file)
        self.sp_model = spm.SentencePieceProcessor(model_file=self.vocab_file)
        for piece, expected in _SP_IDS.items():
            if self.sp_model.piece_to_id(piece) != expected:
                raise UsageError(f"{vocab_file}: ChatGLM2 needs {piece!r} at id {expected}, the sentencepiece model "
                                 f"has it at {self.sp_model.piece_to_id(piece)}.")
        n = self.sp_model.get_piece_size()
        # The base class maps token strings through the added-token table first, so an ordinary piece spelled
        # "sop"/"eop" would silently become the special id; such pieces get an alias string instead.
        self._alias = {p: _ALIAS.format(p) for p in GLM_SPECIAL_TOKENS if self._is_piece(p)}
        self._unalias = {a: p for p, a in self._alias.items()}
        # Pre-seeding the added-token table fixes the special ids at n, n+1, ...; a saved tokenizer passes the
        # same table back as ``added_tokens_decoder``.
        self._added_tokens_decoder = {
            n + i: AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for i, t in enumerate(GLM_SPECIAL_TOKENS)}
        # From ChatGLM2's own tokenizer_config.json: an unused flag, and the remote-code class a saved copy
        # must not point AutoTokenizer back to.
        kwargs.pop("remove_space", None)
        kwargs.pop("auto_map", None)
        kwargs.setdefault("extra_special_tokens", list(GLM_SPECIAL_TOKENS))
        super().__init__(unk_token=unk_token, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                         padding_side=padding_side, clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                         **kwargs)

    def _is_piece(self, token: str) -> bool:
        return self.sp_model.id_to_piece(self.sp_model.piece_to_id(token)) == token

    @property
    def vocab_size(self) -> int:
        """Size of the sentencepiece vocabulary alone (``len(tokenizer)`` adds the five GLM tokens)."""
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self._convert_id_to_token(i): i for i in range(self.vocab_size)}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _update_total_vocab_size(self):
        # Counted from the highest id, not from get_vocab(): an aliased piece must not shrink len(tokenizer).
        self.total_vocab_size = max([self.vocab_size - 1, *self._added_tokens_decoder]) + 1

    def _update_trie(self, unique_no_split_tokens: list[str] | None = None):
        # Keep "sop"/"eop" out of the added-token trie, which matches anywhere (it would split "people").
        for token in [t.content for t in self._added_tokens_decoder.values()] + list(unique_no_split_tokens or []):
            if token not in _WORD_LIKE and token not in self.tokens_trie._tokens:
                self.tokens_trie.add(token)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Split ``text`` into tokens; ``sop``/``eop`` count as special only right after a mask token."""
        if kwargs.get("split_special_tokens", self.split_special_tokens):
            return super().tokenize(text, **kwargs)
        tokens: list[str] = []
        for i, part in enumerate(_SOP_EOP.split(text)):
            if i % 2:
                tokens.append(part)
            elif part:
                # A whole chunk equal to "sop"/"eop" comes back from the base class as the special token.
                for token in super().tokenize(part, **kwargs):
                    tokens.extend(self._tokenize(token) if token in _WORD_LIKE else [token])
        return tokens

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self._alias.get(p, p) for p in self.sp_model.encode(text, out_type=str)]

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(self._unalias.get(token, token))

    def _convert_id_to_token(self, index: int) -> str:
        piece = self.sp_model.id_to_piece(index)
        return self._alias.get(piece, piece)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode(self.convert_tokens_to_ids(tokens))

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False,
                clean_up_tokenization_spaces: bool | None = None, **kwargs) -> str:
        """Decode runs of pieces with sentencepiece (byte fallback, ``▁``), added tokens verbatim.

        Works on ids rather than token strings so that an aliased piece and a special token never mix up.
        """
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        out, run = [], []
        for i in ids:
            if i in skip:
                continue
            if i in self._added_tokens_decoder:
                out += [self.sp_model.decode(run), self._added_tokens_decoder[i].content]
                run = []
            else:
                run.append(i)
        text = "".join(out + [self.sp_model.decode(run)])
        if clean_up_tokenization_spaces if clean_up_tokenization_spaces is not None \
                else self.clean_up_tokenization_spaces:
            text = self.clean_up_tokenization(text)
        return text

    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        """``[gMASK] sop A`` for one text, ``[gMASK] sop A B </s>`` for a pair, as ChatGLM2 does."""
        prefix = self.convert_tokens_to_ids(["[gMASK]", "sop"])
        if token_ids_1 is None:
            return prefix + token_ids_0
        return prefix + token_ids_0 + token_ids_1 + [self.eos_token_id]

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        if token_ids_1 is None:
            return [1, 1] + [0] * len(token_ids_0)
        return [1, 1] + [0] * (len(token_ids_0) + len(token_ids_1)) + [1]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Copy ``tokenizer.model`` (or write it from memory when the original file is gone)."""
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        out = os.path.join(save_directory, name)
        if os.path.isfile(self.vocab_file):
            if os.path.abspath(self.vocab_file) != os.path.abspath(out):
                shutil.copyfile(self.vocab_file, out)
        else:
            Path(out).write_bytes(self.sp_model.serialized_model_proto())
        return (out,)


def is_chatglm2_tokenizer_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a sentencepiece ``tokenizer.model`` with ChatGLM2's ``<unk> <s> </s>`` = 0, 1, 2.

    GLM-4's remote-code checkpoints also name their (tiktoken) vocabulary ``tokenizer.model``; those fail here.
    """
    file = Path(path) / "tokenizer.model"
    if not file.is_file():
        return False
    try:
        sp = spm.SentencePieceProcessor(model_file=str(file))
    except (RuntimeError, OSError):
        return False
    return all(sp.piece_to_id(p) == i for p, i in _SP_IDS.items())


def load_chatglm2_tokenizer(path: str | os.PathLike, **kwargs):
    """ChatGLM2's tokenizer for a ChatGLM2 or converted folder, otherwise ``AutoTokenizer``'s.

    Args:
        path: Model folder.
        **kwargs: Passed to ``from_pretrained``.

    Raises:
        FileNotFoundError: when the folder has neither ChatGLM2's ``tokenizer.model`` nor a tokenizer file.
    """
    path = Path(path)
    if is_chatglm2_tokenizer_folder(path):
        logger.info("Loading ChatGLM2's sentencepiece tokenizer from %s", path)
        return ChatGLM2Tokenizer.from_pretrained(str(path), **kwargs)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise FileNotFoundError(f"{path} has no tokenizer: expected ChatGLM2's tokenizer.model (sentencepiece) or "
                                f"a tokenizer.json.")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), **kwargs)
