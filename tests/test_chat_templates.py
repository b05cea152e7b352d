"""The tokenizer's own chat template, trained exactly: ids equal ``apply_chat_template``'s, answers (and only
answers) supervised, on the real templates of Qwen3, Qwen2.5, Llama 3.2, Gemma 3 and SmolLM2."""
from __future__ import annotations

import pytest
from conftest import real_tokenizer

from finetune.data.tokenize import IGNORE_INDEX, Encoder
from finetune.errors import UsageError
from finetune.templates import TemplateError, TokenizerTemplate, get_template

TWO_TURNS = [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Blue."},
             {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Red."}]
SYSTEM = [{"role": "system", "content": "Be brief."}]

# What each template supervises of TWO_TURNS: every answer with the end of its turn, as the full rendering shows it.
# Qwen3 writes an empty think block before the last answer only (its template's `loop.last` rule), and that block
# is what the model must learn to write when it answers without thinking.
SUPERVISED = {
    "qwen3": ["Blue.<|im_end|>\n", "<think>\n\n</think>\n\nRed.<|im_end|>\n"],
    "qwen2_5": ["Blue.<|im_end|>\n", "Red.<|im_end|>\n"],
    "llama3_2": ["Blue.<|eot_id|>", "Red.<|eot_id|>"],
    "gemma3": ["Blue.<end_of_turn>\n", "Red.<end_of_turn>\n"],
    "smollm2": ["Blue.<|im_end|>\n", "Red.<|im_end|>\n"],
}


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    found = {name: real_tokenizer(name) for name in SUPERVISED if name != "smollm2"}
    return {**found, "smollm2": tokenizer}


def encode(tok, messages, thinking="keep", template=None, tools=None):
    encoder = Encoder(tok, template or get_template("tokenizer"), 10**6, thinking)
    columns = encoder({"messages": [messages], "tools": [tools]})
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    return ids, labels, encoder


def spans(tok, ids, labels) -> list[str]:
    """The supervised text, one string per run of supervised tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return [tok.decode(run) for run in runs + ([current] if current else [])]


def reference(tok, messages, **kwargs) -> list[int]:
    return tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)


@pytest.mark.parametrize("name", sorted(SUPERVISED))
@pytest.mark.parametrize("system", [False, True])
def test_ids_equal_apply_chat_template_and_only_answers_are_supervised(name, system, tokenizers):
    tok = tokenizers[name]
    messages = (SYSTEM if system else []) + TWO_TURNS
    ids, labels, _ = encode(tok, messages)
    assert ids == reference(tok, messages)
    assert spans(tok, ids, labels) == SUPERVISED[name]


@pytest.mark.parametrize("name", sorted(SUPERVISED))
def test_single_turn_and_the_generation_prompt_inference_sends(name, tokenizers):
    tok = tokenizers[name]
    ids, labels, encoder = encode(tok, TWO_TURNS[:2])
    assert ids == reference(tok, TWO_TURNS[:2])
    assert spans(tok, ids, labels) == [SUPERVISED[name][-1].replace("Red.", "Blue.")]
    # Generation: the prompt is exactly what apply_chat_template gives with add_generation_prompt.
    assert encoder.encode_prompt(TWO_TURNS[:3]) == reference(tok, TWO_TURNS[:3], add_generation_prompt=True)


def test_qwen3_second_user_turn_is_trained_as_context_whole(tokenizers):
    """The bug the issue found: rendering each turn alone and slicing by length cut '<|im_start|>user\\nAn' out of
    the second user turn and kept a think block the full rendering drops."""
    tok = tokenizers["qwen3"]
    ids, labels, _ = encode(tok, TWO_TURNS)
    text = tok.decode(ids)
    assert "Blue.<|im_end|>\n<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n" in text
    context = tok.decode([t for t, label in zip(ids, labels) if label == IGNORE_INDEX])
    assert "<|im_start|>user\nAnother?<|im_end|>" in context


def test_gemma3_has_no_system_role_and_writes_the_system_prompt_into_the_first_user_turn(tokenizers):
    tok = tokenizers["gemma3"]
    ids, labels, _ = encode(tok, SYSTEM + TWO_TURNS)
    assert tok.decode(ids).startswith("<bos><start_of_turn>user\nBe brief.\n\nWhat colour is the sky?<end_of_turn>")
    assert spans(tok, ids, labels) == SUPERVISED["gemma3"]


def test_an_empty_system_prompt_is_left_out_as_inference_leaves_it_out(tokenizers):
    tok = tokenizers["qwen3"]
    ids, _, _ = encode(tok, [{"role": "system", "content": ""}] + TWO_TURNS)
    assert ids == reference(tok, TWO_TURNS) and "system" not in tok.decode(ids)


def test_the_stop_tokens_are_the_ones_each_template_ends_answers_with(tokenizers):
    def stops(tok, template=None):
        return tok.convert_ids_to_tokens(encode(tok, TWO_TURNS, template=template)[2].stop_ids)

    assert stops(tokenizers["gemma3"]) == ["<end_of_turn>"]  # its tokenizer_config makes it the EOS
    assert stops(tokenizers["llama3_2"]) == ["<|eot_id|>"] and stops(tokenizers["qwen3"]) == ["<|im_end|>"]
    # Gemma 2's tokenizer ends text with <eos>, but every answer of its template ends with <end_of_turn>.
    assert stops(real_tokenizer("gemma2"), get_template("gemma")) == ["<eos>", "<end_of_turn>"]


GENERATION_TAGGED = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>\\n' }}{% endgeneration %}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_the_located_answers_equal_the_templates_own_assistant_mask(tokenizers):
    """Where a template marks its answers ({% generation %}, as TRL's templates do), transformers returns the mask
    itself: the answers found without the marks are the same tokens."""
    import copy

    tok = copy.deepcopy(tokenizers["qwen2_5"])
    tok.chat_template = GENERATION_TAGGED
    messages = SYSTEM + TWO_TURNS + [{"role": "user", "content": "And grass?"},
                                     {"role": "assistant", "content": "Green,\nmostly."}]
    ids, labels, _ = encode(tok, messages)
    marked = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ids == marked["input_ids"]
    assert [int(label != IGNORE_INDEX) for label in labels] == marked["assistant_masks"]


def test_llama3_first_template_is_refused_with_the_named_one_suggested():
    tok = real_tokenizer("llama3")  # appends the assistant header to every rendering, answered or not
    with pytest.raises(TemplateError, match="data.template=llama3"):
        encode(tok, TWO_TURNS)
    ids, labels, _ = encode(tok, TWO_TURNS, template=get_template("llama3"))
    assert spans(tok, ids, labels) == ["Blue.<|eot_id|>", "Red.<|eot_id|>"]
    assert ids[:1] == [tok.convert_tokens_to_ids("<|begin_of_text|>")] and ids.count(ids[0]) == 1


def test_a_template_without_a_chat_template_falls_back_with_one_clear_error():
    tok = real_tokenizer("gemma2")  # its package ships no chat template
    with pytest.raises(UsageError, match="needs a tokenizer with a chat_template"):
        encode(tok, TWO_TURNS, template=TokenizerTemplate())
    ids, labels, _ = encode(tok, TWO_TURNS, template=get_template("gemma"))
    assert tok.decode(ids).startswith("<bos><start_of_turn>user\nWhat colour is the sky?<end_of_turn>\n"
                                      "<start_of_turn>model\nBlue.<end_of_turn>\n")
    assert spans(tok, ids, labels) == ["Blue.<end_of_turn>\n", "Red.<end_of_turn>\n"]
