# LoRA on Qwen3-0.6B with its own chat template: learn to name Unicode characters (the demo's data).
#
#   hf download Qwen/Qwen3-0.6B            # where there is internet; then copy the cache or the folder here
#   python -m finetune.run recipes/qwen3_lora.py
#   python -m finetune.check template recipes/qwen3_lora.py   # training ids == apply_chat_template, 0 mismatches
#
# Assumes: Qwen3-0.6B in the local Hugging Face cache (or model.path=DIR); one GPU with >= 8 GB, or a CPU (slow).
# Template: auto = the tokenizer's chat template. The answers carry no reasoning, so Qwen3's template writes an
#           empty <think></think> before each last answer and it trains: the model learns to answer without
#           thinking when the data does (data.thinking=drop would turn enable_thinking off instead).
# Batch: 8 examples x 2 accumulation = 16 examples/step, ~33 tokens each with Qwen3's tokenizer (ChatML headers
#        and the empty think block included) -> ~530 tokens/step; 360 / 16 = 22.5 steps/epoch x 3 epochs = 68 steps.
# LoRA r=16 on all 7 linear layers of 28 blocks: 10.1M trainable of 0.6B parameters (1.7 %).
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="qwen3_lora",
    model=ModelSpec(path="Qwen/Qwen3-0.6B", max_length=256),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca"),
    method=LoraSpec(r=16, alpha=32, dropout=0.05),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                          learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5,
                          eval_strategy="epoch"),
    eval=EvalSpec(samples=8, max_new_tokens=32),
)
