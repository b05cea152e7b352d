"""Text-generation metrics against hand-computed values and against the official ChatGLM2 recipe called directly."""
import jieba
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from finetune.evaluation.metrics import chinese_scores, compute_scores, english_scores
from finetune.language import detect_language


def _official_bleu(prediction, reference):
    """BLEU-4 as ChatGLM2 ``ptuning/main.py`` computes it: characters, smoothing method 3, ×100."""
    return sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3) * 100


def test_chinese_rouge_by_hand():
    prediction, reference = "我喜欢猫", "我喜欢吃苹果"
    assert list(jieba.cut(prediction)) == ["我", "喜欢", "猫"]
    assert list(jieba.cut(reference)) == ["我", "喜欢", "吃", "苹果"]
    # ROUGE-1: overlap {我, 喜欢} = 2; P = 2/3, R = 2/4; F = 2PR/(P+R) = (2/3)/(7/6) = 4/7 = 57.1429%.
    # ROUGE-2: hyp {我喜欢, 喜欢猫}, ref {我喜欢, 喜欢吃, 吃苹果}; overlap 1; P = 1/2, R = 1/3; F = (1/3)/(5/6) = 40%.
    # ROUGE-L: LCS = 我 喜欢 = 2 words; P = 2/3, R = 2/4; F = 4/7 = 57.1429%.
    scores = chinese_scores([prediction], [reference])
    assert scores["rouge-1"] == pytest.approx(57.1429, abs=1e-4)
    assert scores["rouge-2"] == pytest.approx(40.0, abs=1e-4)
    assert scores["rouge-l"] == pytest.approx(57.1429, abs=1e-4)
    # BLEU on characters: the same number as nltk called directly with the official recipe (36.0645).
    assert scores["bleu-4"] == round(_official_bleu(prediction, reference), 4)


def test_chinese_identical_pair_is_100():
    assert chinese_scores(["今天天气很好"], ["今天天气很好"]) == {
        "rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}


def test_chinese_matches_the_official_loop():
    predictions = ["我喜欢猫", "今天天气很好", "用 PyTorch 训练模型", "好"]
    references = ["我喜欢吃苹果", "今天天气不好", "使用 PyTorch 训练一个模型", "很好的"]
    # The body of ChatGLM2's compute_metrics, reproduced literally (minus decoding), as the golden source.
    expected = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(predictions, references):
        scores = Rouge().get_scores(" ".join(jieba.cut(pred)), " ".join(jieba.cut(label)))[0]
        for key, value in scores.items():
            expected[key].append(round(value["f"] * 100, 4))
        expected["bleu-4"].append(round(_official_bleu(pred, label), 4))
    assert chinese_scores(predictions, references) == {key: float(np.mean(v)) for key, v in expected.items()}


def test_chinese_empty_side_scores_zero_instead_of_raising():
    with pytest.raises(ValueError, match="Hypothesis is empty"):
        Rouge().get_scores("", "我 喜欢")  # why the guard exists
    scores = chinese_scores(["", "  ", "我喜欢猫"], ["我喜欢猫", "我喜欢猫", ""])
    assert scores == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}


def test_english_rouge_by_hand():
    # Lower-cased and Porter-stemmed: hyp [the, cat, is, run], ref [the, cat, run].
    # ROUGE-1: overlap 3; P = 3/4, R = 3/3; F = (3/2)/(7/4) = 6/7 = 85.714%.
    # ROUGE-2: hyp {the cat, cat is, is run}, ref {the cat, cat run}; overlap 1; P = 1/3, R = 1/2; F = 40%.
    # ROUGE-L: LCS = the cat run = 3; same P and R as ROUGE-1, F = 6/7.
    scores = english_scores(["The cat is running"], ["the cat runs"])
    assert scores["rouge-1"] == pytest.approx(600 / 7)
    assert scores["rouge-2"] == pytest.approx(40.0)
    assert scores["rouge-l"] == pytest.approx(600 / 7)
    assert scores["exact-match"] == 0.0


def test_english_stemming_matches_inflections():
    scores = english_scores(["running"], ["runs"])
    assert scores["rouge-1"] == pytest.approx(100.0)  # both stem to "run"
    assert scores["bleu-4"] == 0.0  # BLEU compares surface words, so no match


def test_english_bleu_is_nltk_on_whitespace_words():
    prediction, reference = "the quick brown fox jumps over the dog", "the quick brown fox jumped over the lazy dog"
    expected = sentence_bleu([reference.split()], prediction.split(), smoothing_function=SmoothingFunction().method3)
    assert english_scores([prediction], [reference])["bleu-4"] == pytest.approx(expected * 100)
    assert english_scores([reference], [reference])["bleu-4"] == pytest.approx(100.0)


def test_exact_match_ignores_surrounding_whitespace_and_case():
    scores = english_scores([" Hello World\n", "hello", "Straße"], ["hello world", "hello there", "STRASSE"])
    assert scores["exact-match"] == pytest.approx(200 / 3)  # casefold makes "ß" equal "ss"


@pytest.mark.parametrize("texts, language", [
    (["今天天气很好"], "zh"),
    (["The weather is nice today."], "en"),
    (["用 PyTorch 训练模型"], "zh"),  # 5 Han of 12 letters = 0.42: Chinese despite the Latin term
    (["Ask 李明 about the report tomorrow"], "en"),  # 2 Han of 27 letters
    (["12345", "!?"], "en"),  # no letters at all
])
def test_detect_language(texts, language):
    assert detect_language(texts) == language


def test_compute_scores_routes_by_language_of_references():
    # Auto looks at the references, so an English answer to a Chinese reference is still scored as Chinese.
    assert "exact-match" not in compute_scores(["I like cats"], ["我喜欢猫"])
    assert "exact-match" in compute_scores(["I like cats"], ["I like dogs"])
    assert compute_scores(["我喜欢猫"], ["我喜欢吃苹果"], language="en")["rouge-1"] == 0.0  # rouge_score drops Han


def test_compute_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        compute_scores([], [])
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        compute_scores(["a"], ["a"], language="fr")
    with pytest.raises(ValueError, match="predictions but"):
        chinese_scores(["a"], [])
