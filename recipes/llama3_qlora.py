# QLoRA on Llama-3.2-1B-Instruct (NF4, double quantisation, bf16 compute) with Llama 3's own chat template.
#
#   python -m finetune.run recipes/llama3_qlora.py model.path=/models/Llama-3.2-1B-Instruct
#   python -m finetune.check template recipes/llama3_qlora.py
#
# Assumes: a Llama 3.x Instruct checkpoint (3.1 8B works the same; its "llama3" RoPE scaling is read from the
# config), one GPU with >= 6 GB and bf16 (Ampere or newer).
# Template: auto = the tokenizer's chat template; its pad token is <|finetune_right_pad_id|>, which Meta reserves
#           for fine-tuning (the llama family's first pad candidate that exists). Llama 3.2's template writes
#           "Today Date" from the clock into every system block: tokenized data carries the day it was made.
# Memory: 0.97B params in the linear layers x 0.5 byte (NF4) = 0.49 GB, + the tied 128,256 x 2,048 embedding in
#         bf16 = 0.53 GB; LoRA r=32 on 7 layers x 16 blocks = 22.5M params x 16 B (weights, grads, AdamW) =
#         0.36 GB; activations recomputed (checkpointing).
# Batch: 4 x 4 accumulation x <= 512 tokens = <= 8,192 tokens/step; 3 epochs of 360 examples = 69 steps.
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.recipe import QuantSpec

recipe = Recipe(
    name="llama3_qlora",
    model=ModelSpec(path="meta-llama/Llama-3.2-1B-Instruct", max_length=512,
                    quantization=QuantSpec(quant_type="nf4", double_quant=True, compute_dtype="bfloat16")),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca"),
    method=LoraSpec(r=32, alpha=64, dropout=0.05),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                          learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05,
                          activation_checkpointing=True, logging_steps=5, eval_strategy="epoch"),
    eval=EvalSpec(samples=8, max_new_tokens=32),
)
