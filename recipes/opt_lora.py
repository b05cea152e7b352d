# LoRA on OPT-350m with the Alpaca prompt.
#
#   python -m finetune.run recipes/opt_lora.py model.path=/models/opt-350m
#
# Assumes: facebook/opt-350m on disk, any GPU (or CPU: ~1 it/s at this batch on a laptop).
# LoRA r=16 on q,k,v,out_proj,fc1,fc2 of 24 blocks: 24 x (4 x 2 x 1024 x 16 + 2 x (1024 + 4096) x 16) = 7.1M params.
# Batch: 8 x 2 accumulation x ~60 tokens = ~960 tokens/step; 3 epochs over 360 examples = 135 steps.
from finetune import DataSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="opt_lora",
    model=ModelSpec(path="facebook/opt-350m", family="opt", max_length=256),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca",
                  template="alpaca"),
    method=LoraSpec(r=16, alpha=32, dropout=0.05),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                          learning_rate=3e-4, warmup_steps=0.05, logging_steps=10),
)
