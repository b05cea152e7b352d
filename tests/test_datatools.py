"""Data tools through ``python -m finetune.data``'s ``main``: filter, mix, convert and stats on tiny fixtures."""
from __future__ import annotations

import json
import random

import jieba
import pytest
from rouge_chinese import Rouge
from rouge_score import rouge_scorer

from finetune.data.__main__ import main
from finetune.data.readers import read_examples
from finetune.data.tools.rouge import NearDuplicateIndex, lcs_length, rouge_l, tokenize


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def alpaca(instruction, output="A plain answer.", **extra):
    return {"instruction": instruction, "input": "", "output": output, **extra}


# ---------------------------------------------------------------- ROUGE-L and the candidate pruning

def test_rouge_l_equals_rouge_score_on_english():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(0)
    words = "the a cat dog sat on mat write poem about Autumn leaves, park! explain how why".split()
    for _ in range(200):
        a = " ".join(rng.choices(words, k=rng.randint(1, 15)))
        b = " ".join(rng.choices(words, k=rng.randint(1, 15)))
        assert rouge_l(tokenize(a), tokenize(b)) == scorer.score(a, b)["rougeL"].fmeasure
    for _ in range(300):  # the bit-parallel LCS against rouge_score's DP table
        x, y = rng.choices(range(6), k=rng.randint(0, 40)), rng.choices(range(6), k=rng.randint(0, 90))
        assert lcs_length(x, y) == rouge_scorer._lcs_table(x, y)[-1][-1]


def test_rouge_l_matches_rouge_chinese_on_jieba_words():
    a, b = "请写一首关于秋天落叶的短诗", "请写一首关于秋天的落叶的短诗"
    expected = Rouge().get_scores(" ".join(jieba.cut(b)), " ".join(jieba.cut(a)))[0]["rouge-l"]["f"]
    assert rouge_l(tokenize(a), tokenize(b)) == pytest.approx(expected, abs=1e-6)  # rouge-chinese adds 1e-8


def test_prefix_index_finds_what_brute_force_finds():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(40)]
    base = [rng.choices(vocab, k=rng.randint(3, 14)) for _ in range(60)]
    prompts = [list(rng.choice(base)) for _ in range(400)]
    for p in prompts:  # perturb: replace, insert or delete a word or two
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(p))
            rng.choice([lambda: p.__setitem__(i, rng.choice(vocab)), lambda: p.insert(i, rng.choice(vocab)),
                        lambda: p.pop(i) if len(p) > 1 else None])()
    ids = [[int(w[1:]) for w in p] for p in prompts]
    index, brute_kept, kept_by_index = NearDuplicateIndex(0.7, {w: w for w in range(40)}), [], []
    for p in ids:
        if not any(rouge_l(p, k) >= 0.7 for k in brute_kept):
            brute_kept.append(p)
        if index.find(p) is None:
            index.add(p)
            kept_by_index.append(p)
    assert kept_by_index == brute_kept
    assert index.stats.lcs < index.stats.pairs / 5


# ---------------------------------------------------------------- filter

BASE = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
UNDER = "alpha bravo charlie delta echo foxtrot golf hotel kilo lima mike november oscar"  # LCS 8 of 10 and 13
OVER = "alpha bravo charlie delta echo foxtrot papa"  # LCS 6 of 10 and 7


def test_filter_threshold_is_inclusive_at_0_7(tmp_path, capsys):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    under, over = scorer.score(UNDER, BASE)["rougeL"].fmeasure, scorer.score(OVER, BASE)["rougeL"].fmeasure
    assert under == pytest.approx(16 / 23) and under < 0.7  # 0.6957
    assert over == pytest.approx(12 / 17) and over > 0.7  # 0.7059
    assert scorer.score(OVER, UNDER)["rougeL"].fmeasure == pytest.approx(0.6)
    src = write(tmp_path / "in.jsonl", [alpaca(BASE), alpaca(UNDER), alpaca(OVER)])
    assert main(["filter", src, str(tmp_path / "out.jsonl")]) == 0
    assert [r["instruction"] for r in read(tmp_path / "out.jsonl")] == [BASE, UNDER]
    [dropped] = read(tmp_path / "out.dropped.jsonl")
    assert dropped["reason"] == "near-duplicate" and dropped["rouge_l"] == over
    assert dropped["similar_to"]["instruction"] == BASE and dropped["where"].endswith("in.jsonl:3")
    assert "near-duplicate          1" in capsys.readouterr().out


def test_filter_reasons_and_side_file(tmp_path, capsys):
    records = [
        alpaca("Summarise the story of Hamlet in two sentences.", source="web"),
        alpaca("Summarise the story of Hamlet in two sentences.", source="web"),  # exact duplicate
        alpaca("Describe the picture I sent you."),  # keyword
        alpaca("Explain data mapping in databases."),  # 'map' is matched as a whole word only
        alpaca("请描述这张图片的内容。"),  # Chinese keyword
        alpaca("请写一首关于秋天落叶的短诗"),
        alpaca("请写一首关于秋天的落叶的短诗"),  # jieba near-duplicate
        alpaca("介绍一下长城的历史。"),
        alpaca("Name a colour.", output="Red"),  # too short for --min-chars 5
        alpaca("Write an essay on rivers.", output="x" * 300),  # too long for --max-chars 200
        alpaca("Say something nice.", output="You are great. " * 12),  # repetition
        alpaca("Give an empty answer.", output=""),  # the reader skips it: dropped as an empty answer
    ]
    src = write(tmp_path / "in.jsonl", records)
    assert main(["filter", src, str(tmp_path / "out.jsonl"), "--format", "alpaca", "--min-chars", "5",
                 "--max-chars", "200"]) == 0
    kept = read(tmp_path / "out.jsonl")
    assert kept == [records[i] for i in (0, 3, 5, 7)]  # written back exactly as they came, extra fields too
    dropped = {d["where"].rsplit(":", 1)[1]: d for d in read(tmp_path / "out.dropped.jsonl")}
    reasons = {line: d["reason"] for line, d in dropped.items()}
    assert reasons == {"2": "exact duplicate", "3": "keyword", "5": "keyword", "7": "near-duplicate",
                       "9": "too short", "10": "too long", "11": "repetition", "12": "empty answer"}
    assert dropped["3"]["detail"] == "picture" and dropped["5"]["detail"] == "图片"
    assert dropped["7"]["rouge_l"] >= 0.7 and dropped["2"]["record"] == records[1]
    out = capsys.readouterr().out
    assert "kept 4 of 12" in out and "keyword                 2" in out


def test_filter_compares_alpaca_inputs_on_their_own(tmp_path):
    task = "Give the official Unicode name of this character."
    records = [{"instruction": task, "input": "ũ", "output": "LATIN SMALL LETTER U WITH TILDE"},
               {"instruction": task, "input": "â", "output": "LATIN SMALL LETTER A WITH CIRCUMFLEX"},
               {"instruction": task, "input": "â", "output": "Latin small letter a with circumflex"},
               {"instruction": "Translate to French.", "input": "The cat sleeps on the warm mat", "output": "Le chat"},
               {"instruction": "Translate to French.", "input": "The cat sleeps on the mat", "output": "Le chat."},
               {"instruction": "Translate to French.", "input": "Where is the station?", "output": "Où est la gare ?"}]
    src = write(tmp_path / "in.jsonl", records)
    assert main(["filter", src, str(tmp_path / "out.jsonl")]) == 0
    assert read(tmp_path / "out.jsonl") == [records[i] for i in (0, 1, 3, 5)]
    assert tokenize("Ünïcode café") == ["ünïcode", "café"]  # rouge_score would keep only "n", "code", "caf"


def test_filter_keywords_can_be_replaced(tmp_path):
    src = write(tmp_path / "in.jsonl", [alpaca("Describe the picture."), alpaca("Tell me a joke about cats.")])
    assert main(["filter", src, str(tmp_path / "a.jsonl"), "--keywords", ""]) == 0
    assert len(read(tmp_path / "a.jsonl")) == 2
    assert main(["filter", src, str(tmp_path / "b.jsonl"), "--keywords", "cats,猫"]) == 0
    assert [r["instruction"] for r in read(tmp_path / "b.jsonl")] == ["Describe the picture."]


# ---------------------------------------------------------------- mix

@pytest.fixture
def sources(tmp_path):
    a = write(tmp_path / "a.jsonl", [alpaca(f"Question {i}?", f"Answer {i}.") for i in range(10)])
    s = write(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": f"Hi {i}"},
                                                        {"from": "gpt", "value": f"Hello {i}"}]} for i in range(6)])
    return a, s


def _mix(tmp_path, *args, name="mix.jsonl"):
    assert main(["mix", str(tmp_path / name), *args, "--overwrite"]) == 0  # the same OUT, mixed again
    return read(tmp_path / name)


def test_mix_sizes_ratios_and_source_field(tmp_path, sources):
    a, s = sources
    mixed = _mix(tmp_path, "--source", f"{a}:alpaca:4", "--source", f"{s}:sharegpt:3")
    assert sorted(r["source"] for r in mixed) == ["a"] * 4 + ["s"] * 3
    assert len(read_examples(tmp_path / "mix.jsonl", "messages").conversations) == 7
    assert all(set(r) == {"messages", "source"} for r in mixed)
    counts = lambda rows: [sum(r["source"] == n for r in rows) for n in "as"]  # noqa: E731
    assert counts(_mix(tmp_path, "--source", f"{a}:alpaca:0.5", "--source", f"{s}:sharegpt:0.5")) == [6, 6]
    assert counts(_mix(tmp_path, "--source", f"{a}:alpaca:0.75", "--source", f"{s}:sharegpt:0.25",
                       "--total", "8")) == [6, 2]
    assert counts(_mix(tmp_path, "--source", f"{a}:alpaca:6", "--source", f"{s}:sharegpt:0.25")) == [6, 2]
    assert counts(_mix(tmp_path, "--source", f"{a}:alpaca", "--source", f"{s}:sharegpt")) == [10, 6]


def test_mix_is_seeded_and_reports_replacement(tmp_path, sources, capsys):
    a, s = sources
    args = ["--source", f"{a}:alpaca:5", "--source", f"{s}:sharegpt:10", "--format", "sharegpt"]
    first = _mix(tmp_path, *args, "--seed", "3", name="1.jsonl")
    assert _mix(tmp_path, *args, "--seed", "3", name="2.jsonl") == first
    assert _mix(tmp_path, *args, "--seed", "4", name="3.jsonl") != first
    assert "with replacement" in capsys.readouterr().out
    hellos = {r["conversations"][1]["value"] for r in first if r["source"] == "s"}
    assert hellos == {f"Hello {i}" for i in range(6)}  # every example at least once before any repeat
    assert main(["mix", str(tmp_path / "x.jsonl"), "--source", f"{a}:alpaca:0.7", "--source", f"{s}:sharegpt:0.7"]) == 2


# ---------------------------------------------------------------- convert

def _convert(tmp_path, src, dst, records, *extra):
    path = write(tmp_path / f"{src}.jsonl", records)
    out = tmp_path / f"{src}-to-{dst}.jsonl"
    return main(["convert", path, str(out), "--from", src, "--to", dst, *extra]), out


def test_convert_round_trips(tmp_path):
    records = [alpaca("What is 2+2?", "4", id=7),
               {"instruction": "And times 3?", "input": "", "output": "12", "system": "Be brief.",
                "history": [["What is 2+2?", "4"]]}]
    rc, shared = _convert(tmp_path, "alpaca", "sharegpt", records)
    assert rc == 0 and read(shared)[1]["conversations"][0] == {"from": "human", "value": "What is 2+2?"}
    assert main(["convert", str(shared), str(tmp_path / "back.jsonl"), "--from", "sharegpt", "--to", "alpaca"]) == 0
    assert read(tmp_path / "back.jsonl") == records

    with_input = [{"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit"}]
    rc, messages = _convert(tmp_path, "alpaca", "messages", with_input)
    assert read(messages)[0]["messages"][0] == {"role": "user", "content": "Translate to French.",
                                                "input": "Good night"}
    main(["convert", str(messages), str(tmp_path / "again.jsonl"), "--from", "messages", "--to", "alpaca"])
    assert read(tmp_path / "again.jsonl") == with_input

    firefly = [{"conversation": [{"human": "Hi", "assistant": "Hello"}, {"human": "Bye", "assistant": "Ciao"}],
                "system": "Be kind."}]
    rc, messages = _convert(tmp_path, "firefly", "messages", firefly)
    assert [m["role"] for m in read(messages)[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    main(["convert", str(messages), str(tmp_path / "ff.jsonl"), "--from", "messages", "--to", "firefly"])
    assert read(tmp_path / "ff.jsonl") == firefly


def test_convert_refuses_to_lose_unless_lossy(tmp_path, capsys):
    records = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                "system": "Be kind."}]
    rc, out = _convert(tmp_path, "sharegpt", "adgen", records)
    err = capsys.readouterr().err
    assert rc == 2 and "sharegpt.jsonl:1" in err and "a system prompt" in err and not out.exists()
    rc, out = _convert(tmp_path, "sharegpt", "adgen", records, "--lossy")
    assert rc == 0 and read(out) == [{"content": "Hi", "summary": "Hello"}]
    assert "dropped a system prompt in 1" in capsys.readouterr().out
    rc, _ = _convert(tmp_path, "alpaca", "sharegpt", [{"instruction": "Sum", "input": "1 2", "output": "3"}])
    assert rc == 2 and "Alpaca input" in capsys.readouterr().err


# ---------------------------------------------------------------- stats

def test_stats_numbers_and_png(tmp_path, capsys):
    records = [{"messages": [{"role": "user", "content": "abcd"}, {"role": "assistant", "content": "xy"}],
                "source": "one"},
               {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "wxyz"},
                             {"role": "user", "content": "c"}, {"role": "assistant", "content": "uvwxyz"}],
                "source": "two"},
               {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "x"}],
                "source": "one"}]
    src = write(tmp_path / "m.jsonl", records)
    assert main(["stats", src, "--format", "messages", "--png", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    assert "3 examples, 1 multi-turn (33.3%)" in out
    assert "answer chars: min 1  mean 4.33  median 2  p95 10  max 10" in out  # answers 2, 10, 1
    assert "prompt chars: min 3  mean 3.33  median 3  p95 4  max 4" in out  # prompts 4, 3, 3
    assert "sources: one 2, two 1" in out
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_with_recipe_counts_tokens(tmp_path, capsys, smollm2_path):
    src = write(tmp_path / "a.jsonl", [alpaca("Name the colour of the sky.", "Blue."), alpaca("Hi", "word " * 40)])
    recipe = tmp_path / "r.py"
    recipe.write_text("from finetune import DataSpec, ModelSpec, Recipe\n"
                      f"recipe = Recipe(name='r', model=ModelSpec(path={str(smollm2_path)!r}, max_length=32),\n"
                      f"                data=DataSpec(train={src!r}, format='alpaca', template='chatml', system=''))\n")
    assert main(["stats", src, "--recipe", str(recipe), "--png", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert "template chatml" in out and "1 examples (50.0%) exceed max_length 32" in out
    assert (tmp_path / "t.png").exists()


def test_tool_and_reasoning_data_converts_to_messages_unchanged_and_nowhere_else_silently(tmp_path, capsys):
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "data" / "tool_calls" / "train.jsonl"
    assert main(["convert", str(source), str(tmp_path / "m.jsonl"), "--from", "messages", "--to", "messages"]) == 0
    before, after = read_examples(source, "messages"), read_examples(tmp_path / "m.jsonl", "messages")
    assert after.conversations == before.conversations and after.tools == before.tools and before.tools[0]
    assert main(["convert", str(source), str(tmp_path / "a.jsonl"), "--from", "messages", "--to", "alpaca"]) == 2
    assert "alpaca cannot hold reasoning, tool calls or tool results" in capsys.readouterr().err
