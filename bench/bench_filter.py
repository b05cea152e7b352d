"""Filter benchmark: self-instruct filtering of 10,000 synthetic instructions; report time and the LCS work saved.

    python bench/bench_filter.py [--examples 10000] [--out bench-results/filter.json]

The instructions are what a self-instruct run produces before filtering: about 30 task templates in English and
Chinese ("Write a {form} about {topic} for {audience}.", "请用{n}句话解释{concept}。", ...) filled from word lists of
10-40 entries per slot, so most prompts share their template's frame with hundreds of others and differ in two or
three content words, as generated instructions do. Into that stream go planted near-duplicates (12%: an earlier
prompt with a word swapped, a politeness prefix added, or a clause dropped), exact duplicates (2%), prompts naming
a keyword (image, 图片...), and a few looping or empty answers. Answers are 1-6 templated sentences.

Brute force would score every prompt against everything kept before it; the run reports how many of those pairs
reached an exact LCS after the prefix index and the token-overlap bound, and times a sample of brute-force LCS to
estimate what the pairs would have cost.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = ("climate change, the French Revolution, photosynthesis, machine learning, the stock market, black holes, "
          "ancient Rome, quantum computing, the water cycle, social media, renewable energy, the immune system, "
          "volcanoes, the Silk Road, cryptocurrency, plate tectonics, jazz history, urban gardening, sleep science, "
          "the printing press, coral reefs, electric cars, the Cold War, vaccines, honeybees, inflation, DNA, "
          "the Olympic Games, recycling, artificial intelligence, the Moon landing, chess openings, rainforests, "
          "public transport, meditation, the human brain, 3D printing, desert ecosystems, ocean tides").split(", ")
FORMS = "poem, short story, blog post, haiku, tweet, limerick, speech, product description, dialogue, essay, " \
        "news headline, riddle, letter, summary, slogan".split(", ")
AUDIENCES = "children, beginners, experts, teenagers, retirees, engineers, students, tourists, managers, " \
            "farmers, doctors, artists".split(", ")
VERBS = "explain, summarize, describe, compare, analyze, outline, critique, illustrate, define, evaluate".split(", ")
STYLES = "simple, formal, humorous, persuasive, poetic, concise, detailed, friendly, neutral, dramatic".split(", ")
THINGS = "apples, bicycles, umbrellas, laptops, sneakers, coffee, tea, chairs, guitars, tents, books, watches, " \
         "backpacks, lamps, kites, candles, telescopes, notebooks".split(", ")
ASPECTS = ("the history, the economics, the ethics, the future, the science, common myths about, the risks of, "
           "the benefits of, the politics of, everyday examples of, the mathematics of, open questions about, "
           "the environmental cost of, careers in, famous failures in, the language of, tools used in, "
           "the geography of, misconceptions about, recent breakthroughs in, the culture around").split(", ")
PLACES = ("Lagos, Oslo, Lima, Hanoi, Denver, Cairo, Perth, Quito, Seoul, Dublin, Nairobi, Porto, Kyoto, Austin, "
          "Lyon, Tbilisi, Manila, Accra, Krakow, Halifax, rural India, the Arctic, small islands, mountain towns, "
          "a space station, the 1920s, medieval Europe, a future city").split(", ")
AGES = "young, older, curious, busy, skeptical, retired, first-year, visiting, aspiring, bilingual".split(", ")
ZH_TOPICS = ("人工智能 气候变化 光合作用 丝绸之路 长城 量子计算 区块链 中医 京剧 熊猫 高铁 茶文化 春节 太阳能 唐诗 围棋 "
             "火山 海洋污染 城市化 疫苗 书法 敦煌壁画 大运河 航天工程 稀土 湿地保护 外卖行业 电动汽车 青藏铁路 "
             "故宫 二十四节气 昆曲 基因编辑 芯片制造 沙漠治理 古代科举 移动支付 长江 黄河 熊猫保护").split()
ZH_ASPECTS = "历史 未来 原理 影响 利弊 误区 发展 意义 应用 挑战 文化 经济价值 常见问题 最新进展 争议".split()
ZH_AUDIENCE = "小学生 大学生 老年人 程序员 游客 医生 家长 初学者 外国留学生 中学老师 农民 设计师".split()
ZH_STYLE = "通俗易懂 幽默 正式 简洁 生动 严谨".split()
TEMPLATES_EN = [
    "Write a {style} {form} about {topic} for {audience}.",
    "{Verb} {topic} in {n} sentences for {audience}.",
    "Can you {verb} the main ideas behind {topic}?",
    "What are {n} surprising facts about {topic} that {audience} would enjoy?",
    "Give me {n} tips for {audience} who want to learn about {topic}.",
    "Compare {topic} and {topic2}, focusing on their impact on {audience}.",
    "Create a {style} {form} that sells {thing} to {audience}.",
    "List {n} reasons why {audience} should care about {topic}.",
    "Explain the difference between {topic} and {topic2} in a {style} way.",
    "Suggest {n} creative uses for old {thing} that {audience} could try in {city}.",
    "Write a {style} review of a {thing} brand aimed at {audience}.",
    "How would you teach {topic} to {audience} using only {thing}?",
    "Draft an interview question list about {topic} for {audience}.",
    "Describe a day in the life of a {audience} who studies {topic} in {city}.",
    "Rewrite this sentence in a {style} tone: '{topic} matters to {audience}.'",
    "Summarize the history of {topic} and its link to {topic2}.",
    "Propose a {n}-step plan for {audience} to get started with {topic}.",
    "Invent a {style} {form} where {thing} explain {topic}.",
    "What mistakes do {audience} often make when thinking about {topic}?",
    "Generate {n} quiz questions on {topic} with answers.",
]
TEMPLATES_ZH = [
    "请用{n}句话向{aud}解释{zt}。", "写一段{zs}的文字介绍{zt}。", "{zt}和{zt2}有什么区别？请用{zs}的语言回答。",
    "给{aud}列出{n}个关于{zt}的有趣事实。", "请以{zs}的风格写一首关于{zt}的短诗。", "如何让{aud}对{zt}产生兴趣？",
    "总结{zt}的发展历史，不超过{n}句话。", "为{aud}设计一个学习{zt}的{n}步计划。",
]
KEYWORD_PROMPTS = ["Describe the image of {topic} below.", "Draw a diagram of {topic}.",
                   "Make a video script about {topic}.", "请根据图片描述{zt}。", "Plot the data on {topic}."]
CLAUSES_EN = ["Keep it under {n}0 words.", "Include one example involving {thing}.", "Avoid technical jargon.",
              "End with a question for the reader.", "Mention {topic2} at least once.", "Use a {style} tone.",
              "The reader lives in {city}.", "Format the answer as a numbered list.", "Cite one historical date.",
              "Assume the reader already knows {topic2}.", "Do not use the letter e.", "Add a short title.",
              "Write it as if you were a {job}.", "Start with a surprising statistic.", "Finish with a call to action."]
CLAUSES_ZH = ["字数不超过{n}0字。", "请举一个和{zt2}有关的例子。", "语气要{zs}。", "最后提出一个问题。",
              "读者住在{zcity}。", "用列表的形式回答。", "请加上一个标题。"]
CITIES = "Lagos, Oslo, Lima, Hanoi, Denver, Cairo, Perth, Quito, Seoul, Dublin, Nairobi, Porto".split(", ")
JOBS = "pirate, detective, chef, astronaut, lawyer, gardener, tour guide, news anchor, coach, librarian".split(", ")
ZH_CITIES = "北京 上海 成都 西安 广州 杭州 昆明 哈尔滨".split()
PREFIXES = ["Please ", "Could you ", "I need you to ", "Kindly ", "请", "麻烦"]


def _fill(template: str, rng: random.Random, zh: bool = False) -> str:
    """One prompt: a task frame plus 0-2 extra clauses, so two fills of a frame rarely reach ROUGE-L 0.7."""
    clauses = rng.sample(CLAUSES_ZH if zh else CLAUSES_EN, rng.choice([0, 1, 1, 2, 2]))
    template = ("" if zh else " ").join([template, *clauses])
    topic, topic2 = (f"{rng.choice(ASPECTS)} {t}" + rng.choice(["", f" in {rng.choice(PLACES)}"])
                     for t in rng.sample(TOPICS, 2))
    zt, zt2 = (f"{t}的{rng.choice(ZH_ASPECTS)}" for t in rng.sample(ZH_TOPICS, 2))
    verb = rng.choice(VERBS)
    return template.format(style=rng.choice(STYLES), form=rng.choice(FORMS), topic=topic, topic2=topic2,
                           audience=f"{rng.choice(AGES)} {rng.choice(AUDIENCES)}", verb=verb, Verb=verb.capitalize(),
                           n=rng.randint(2, 12), thing=f"{rng.choice(STYLES)} {rng.choice(THINGS)}", zt=zt, zt2=zt2,
                           aud=f"{rng.choice(ZH_CITIES)}的{rng.choice(ZH_AUDIENCE)}",
                           zs=rng.choice(ZH_STYLE), city=rng.choice(CITIES), job=rng.choice(JOBS),
                           zcity=rng.choice(ZH_CITIES))


def _perturb(prompt: str, rng: random.Random) -> str:
    words = prompt.split()
    kind = rng.choice(["swap", "prefix", "drop"]) if len(words) > 4 else "prefix"
    if kind == "swap":
        words[rng.randrange(len(words))] = rng.choice(STYLES + AUDIENCES)
        return " ".join(words)
    if kind == "drop":
        del words[rng.randrange(1, len(words))]
        return " ".join(words)
    if prompt.isascii():
        return rng.choice(PREFIXES[:4]) + prompt[0].lower() + prompt[1:]
    return rng.choice(PREFIXES[4:]) + prompt


def _answer(prompt: str, rng: random.Random) -> str:
    sentences = [f"{rng.choice(TOPICS).capitalize()} connects to this in {rng.choice(STYLES)} ways."
                 for _ in range(rng.randint(1, 6))]
    return f"Here is a response to: {prompt} " + " ".join(sentences)


def make_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` alpaca records: template fills, planted near/exact duplicates, keyword prompts, bad answers."""
    rng = random.Random(seed)
    records: list[dict] = []
    for _ in range(n):
        roll = rng.random()
        if records and roll < 0.12:
            prompt = _perturb(rng.choice(records)["instruction"], rng)
        elif records and roll < 0.14:
            records.append(dict(rng.choice(records)))
            continue
        elif roll < 0.16:
            prompt = _fill(rng.choice(KEYWORD_PROMPTS), rng, zh=False)
        else:
            zh = rng.random() < 0.2
            prompt = _fill(rng.choice(TEMPLATES_ZH if zh else TEMPLATES_EN), rng, zh)
        answer = _answer(prompt, rng)
        if rng.random() < 0.01:
            answer = "I think so. " * 20
        records.append({"instruction": prompt, "input": "", "output": answer})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--out", default="bench-results/filter.json")
    args = parser.parse_args()

    from finetune.data.tools.convert import write_records
    from finetune.data.tools.filter import FilterConfig, filter_file
    from finetune.data.tools.rouge import rouge_l, tokenize

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "generated.jsonl"
        records = make_records(args.examples)
        write_records(src, records)
        tokenize("预热")  # jieba loads its dictionary (~1 s) on first use; not part of filtering
        start = time.perf_counter()
        report = filter_file(src, Path(tmp) / "clean.jsonl", "alpaca", FilterConfig())
        seconds = time.perf_counter() - start
    rng = random.Random(1)
    sample = [tokenize(r["instruction"]) for r in rng.sample(records, 400)]
    lcs_start = time.perf_counter()
    pairs = [(a, b) for a in sample[:200] for b in sample[200:]]
    for a, b in pairs:
        rouge_l(a, b)
    per_lcs = (time.perf_counter() - lcs_start) / len(pairs)
    from finetune.precision import machine_kind
    result = {
        "examples": args.examples, "seconds": round(seconds, 2), "examples_per_s": round(args.examples / seconds),
        "kept": report.kept, "dropped": dict(report.dropped.most_common()), "brute_force_pairs": report.pairs,
        "index_candidates": report.candidates, "exact_lcs": report.lcs,
        "lcs_avoided": report.pairs - report.lcs, "lcs_avoided_share": round(1 - report.lcs / report.pairs, 6),
        "brute_force_lcs_estimate_s": round(per_lcs * report.pairs, 1), "machine": machine_kind("cpu"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
