"""The padding and padding-free collators on plain lists of ids; a tokenizer only to compare with transformers'
``DataCollatorForSeq2Seq``, and a tiny model only to show a packed row's loss equals the padded batch's."""
import torch

from finetune.training.collators import PaddingCollator

FEATURES = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "num_tokens": 3},
            {"input_ids": [8], "labels": [8]}]


def test_right_padding_masks_labels_and_attention():
    batch = PaddingCollator(pad_token_id=0)(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_pad_to_multiple_and_left_padding():
    batch = PaddingCollator(pad_token_id=1, pad_to_multiple_of=4, padding_side="left")(FEATURES)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 1, 1, 8]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7], [-100, -100, -100, 8]]


def test_without_labels_for_generation():
    batch = PaddingCollator(pad_token_id=0, padding_side="left")([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    assert set(batch) == {"input_ids", "attention_mask"}


def test_equivalent_to_data_collator_for_seq2seq(tokenizer):
    from transformers import DataCollatorForSeq2Seq

    features = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in FEATURES]
    tokenizer.padding_side = "right"
    theirs = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8)(features)
    ours = PaddingCollator(tokenizer.pad_token_id, pad_to_multiple_of=8)(features)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(theirs[key], ours[key]), key


def test_padding_free_concatenates_and_restarts_positions():
    from finetune.training.collators import PaddingFreeCollator

    batch = PaddingFreeCollator()(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100]]
    assert "attention_mask" not in batch


def test_padding_free_loss_equals_the_padded_loss(tiny_llama):
    """Same examples, same model: the packed row's loss equals the padded batch's (no cross-contamination)."""
    from transformers import AutoModelForCausalLM

    from finetune.training.collators import PaddingFreeCollator
    from finetune.training.loss import causal_lm_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    features = [{"input_ids": ids, "labels": [-100] * 3 + ids[3:]}
                for ids in (torch.randint(5, 1000, (n,)).tolist() for n in (9, 17, 6, 12))]
    losses = []
    for batch in (PaddingCollator(pad_token_id=0)(features), PaddingFreeCollator()(features)):
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch, use_cache=False).logits  # a cache would hide the packing from the mask
        losses.append(causal_lm_loss(logits[:, :-1], labels[:, 1:]))
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
