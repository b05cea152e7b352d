"""Golden strings for every template (formats in shared/TEMPLATES.md, sources in finetune/templates.py)."""
import pytest

from finetune.templates import LLAMA2_SYSTEM, get_template, template_names

ONE_TURN = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
TWO_TURNS = ONE_TURN + [{"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Red."}]


def text(name, messages, bos="", eos="</s>"):
    return "".join(t for t, _ in get_template(name).render(messages, bos=bos, eos=eos))


def supervised(name, messages, bos="", eos="</s>"):
    return [t for t, sup in get_template(name).render(messages, bos=bos, eos=eos) if sup]


def test_alpaca_without_input_matches_stanford_prompt_dict():
    assert text("alpaca", ONE_TURN, bos="<s>") == (
        "<s>Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a colour.\n\n### Response:Blue.</s>")
    assert supervised("alpaca", ONE_TURN) == ["Blue.</s>"]


def test_alpaca_with_input_matches_stanford_prompt_dict():
    messages = [{"role": "user", "content": "Translate.", "input": "chat"}, {"role": "assistant", "content": "cat"}]
    assert text("alpaca", messages) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
        "### Input:\nchat\n\n### Response:cat</s>")


def test_llama2_single_turn_has_system_block_inside_first_inst():
    messages = [{"role": "system", "content": "Be brief."}] + ONE_TURN
    assert text("llama2", messages, bos="<s>") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nName a colour. [/INST] Blue. </s>")


def test_llama2_multi_turn_and_default_system():
    assert text("llama2", TWO_TURNS, bos="<s>") == (
        f"<s>[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\nName a colour. [/INST] Blue. </s>"
        "<s>[INST] Another? [/INST] Red. </s>")
    no_system = [{"role": "system", "content": ""}] + TWO_TURNS
    assert text("llama2", no_system, bos="<s>") == (
        "<s>[INST] Name a colour. [/INST] Blue. </s><s>[INST] Another? [/INST] Red. </s>")
    assert supervised("llama2", TWO_TURNS) == [" Blue. </s>", " Red. </s>"]


def test_linly_strips_the_prompt():
    messages = [{"role": "user", "content": "  Name a colour. "}, {"role": "assistant", "content": "Blue."}]
    assert text("linly", messages) == "### Instruction:Name a colour. ### Response:Blue.</s>"


def test_nous_with_and_without_input():
    assert text("nous", ONE_TURN) == "### Instruction:\nName a colour.\n\n### Response:\nBlue.</s>"
    messages = [{"role": "user", "content": "Translate.", "input": "chat"}, {"role": "assistant", "content": "cat"}]
    assert text("nous", messages) == "### Instruction:\nTranslate.\n\n### Input:\nchat\n\n### Response:\ncat</s>"


def test_yayi_default_system_names_yayi():
    rendered = text("yayi", ONE_TURN)
    assert rendered.startswith("<|System|>:\nYou are a helpful, respectful and honest assistant named YaYi developed "
                               "by Beijing Wenge Technology Co.,Ltd. Always answer")
    assert rendered.endswith("\n\n<|Human|>:\nName a colour.\n\n<|YaYi|>:\nBlue.</s>")


def test_stablebeluga2():
    assert text("stablebeluga2", ONE_TURN) == (
        "### System:\nYou are Stable Beluga, an AI that follows instructions extremely well. Help as much as you "
        "can. Remember, be safe, and don't do anything illegal.\n\n### User: Name a colour.\n\n### Assistant:\n"
        "Blue.</s>")


def test_guanaco_multi_turn():
    assert text("guanaco", TWO_TURNS) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.\n### Human: Name a colour. ### Assistant: Blue.</s>"
        " ### Human: Another? ### Assistant: Red.</s>")


def test_chatglm2_rounds_count_from_one_and_only_the_last_answer_ends_with_eos():
    assert text("chatglm2", TWO_TURNS, bos="[gMASK]sop") == (
        "[gMASK]sop[Round 1]\n\n问：Name a colour.\n\n答：Blue.\n\n[Round 2]\n\n问：Another?\n\n答：Red.</s>")
    assert supervised("chatglm2", TWO_TURNS) == ["Blue.", "Red.</s>"]


def test_vicuna():
    assert text("vicuna", TWO_TURNS) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Name a colour. ASSISTANT: Blue.</s>"
        "USER: Another? ASSISTANT: Red.</s>")


def test_chatml_and_generation_prompt():
    messages = [{"role": "system", "content": "S"}] + TWO_TURNS
    assert text("chatml", messages) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
        "Blue.<|im_end|>\n<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>")
    assert text("chatml", ONE_TURN[:1]) == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"


def test_dialogsum():
    messages = [{"role": "user", "content": "#Person1#: Hi.\n#Person2#: Hello."},
                {"role": "assistant", "content": "They greet."}]
    assert text("dialogsum", messages, eos="") == (
        "\nBelow is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruct: Summarize the below conversation.\n\n#Person1#: Hi.\n#Person2#: Hello.\n\n"
        "### Output:\nThey greet.\n\n### End")


def test_firefly_layout():
    assert text("firefly", TWO_TURNS, bos="<s>") == "<s>Name a colour.</s>Blue.</s>Another?</s>Red.</s>"


def test_tokenizer_template_matches_apply_chat_template(tokenizer):
    segments = get_template("tokenizer").render(TWO_TURNS, tokenizer=tokenizer)
    assert "".join(t for t, _ in segments) == tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    assert [t for t, sup in segments if sup] == ["Blue.<|im_end|>\n", "Red.<|im_end|>\n"]
    prompt = get_template("tokenizer").render(ONE_TURN[:1], tokenizer=tokenizer)
    assert "".join(t for t, _ in prompt) == tokenizer.apply_chat_template(
        ONE_TURN[:1], tokenize=False, add_generation_prompt=True)


def test_unknown_template_lists_known_ones():
    with pytest.raises(ValueError, match="known templates: .*alpaca.*chatglm2"):
        get_template("alpacca")


def test_every_template_supervises_the_answer_and_not_the_prompt(tokenizer):
    """Every registered template, the tokenizer's own (SmolLM2's chat template) and ``text`` included."""
    for name in template_names():
        segments = get_template(name).render(ONE_TURN, bos="", eos="</s>", tokenizer=tokenizer)
        answers, context = [t for t, sup in segments if sup], "".join(t for t, sup in segments if not sup)
        assert len(answers) == 1 and answers[0].strip().startswith("Blue."), (name, answers)
        assert "Name a colour." in context and "Blue." not in context, (name, context)
