# LoRA on Gemma-3-1B-it with Gemma's own chat template (no system role: a system prompt opens the first user turn).
#
#   python -m finetune.run recipes/gemma3_lora.py model.path=/models/gemma-3-1b-it
#   python -m finetune.check template recipes/gemma3_lora.py
#
# Assumes: gemma-3-1b-it (model_type gemma3_text) on disk, one GPU with >= 8 GB, or a CPU (slow).
# Attention: Gemma 3 alternates sliding-window (512) and global layers, so `auto` runs transformers' SDPA, which
#            builds the sliding mask (the packed kernel would ignore the window); batches stay padding-free.
# Stops: answers end with <end_of_turn>, which the label audit counts as the end token and generation stops at.
# Batch: 8 x 2 accumulation = 16 examples/step, ~40 tokens each -> ~640 tokens/step; 360 / 16 = 22 steps/epoch x 3.
# LoRA r=16 on all 7 linear layers of 26 blocks: 13.0M trainable of 1.0B parameters (1.3 %).
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="gemma3_lora",
    model=ModelSpec(path="google/gemma-3-1b-it", max_length=256),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca"),
    method=LoraSpec(r=16, alpha=32, dropout=0.05),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                          learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5,
                          eval_strategy="epoch"),
    eval=EvalSpec(samples=8, max_new_tokens=32),
)
