"""Which language a text is in, as far as scoring and splitting it into words go: Chinese or English.

Answers are scored with ChatGLM2's Chinese metrics or the English ones (:mod:`finetune.evaluation.metrics`), and
ROUGE tokens for near-duplicate detection are jieba words or letter runs (:mod:`finetune.data.tools.rouge`); both
ask this module which.
"""
from __future__ import annotations

__all__ = ["CJK_THRESHOLD", "detect_language"]

# A text counts as Chinese above this share of Han characters among its letters. Below one half on purpose: one Han
# character carries about what a 4-5 letter English word does, so a mostly-Chinese answer with a few Latin terms
# ("用 PyTorch 训练模型") can still have fewer Han characters than Latin letters. And the costs are lopsided: scored as
# English, Chinese text is silently dropped (rouge_score keeps only [a-z0-9]); scored as Chinese, English words still
# count, since jieba keeps them whole.
CJK_THRESHOLD = 0.3


def _is_han(char: str) -> bool:
    code = ord(char)
    # CJK Unified Ideographs, Extension A, Compatibility Ideographs, Extensions B and beyond.
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or code >= 0x20000


def detect_language(texts: list[str]) -> str:
    """Say whether texts should be scored as Chinese or English.

    Args:
        texts: The texts to look at, taken together.

    Returns:
        ``"zh"`` when Han characters are more than ``CJK_THRESHOLD`` of all letters, else ``"en"`` (also when there
        are no letters, since whitespace scoring handles digits and symbols).
    """
    letters = [char for text in texts for char in text if char.isalpha()]
    han = sum(_is_han(char) for char in letters)
    return "zh" if letters and han / len(letters) > CJK_THRESHOLD else "en"
