# Full fine-tuning of the embedded SmolLM2-135M-Instruct on the demo task: every weight trains.
#
#   python -m finetune.run recipes/smollm2_full.py
#
# Assumes: nothing but this repository; CPU is enough (about 2.5x the LoRA recipe's time per step).
# Precision: weights, gradients and AdamW moments in fp32 (master weights), matmuls in bf16 autocast where bf16 is
#            native (finetune/precision.py): 134.5M params x (4 + 4 + 8) B = 2.2 GB + activations.
# Same data and template as recipes/smollm2_lora.py: 8 x ~35 tokens = ~280 tokens/step, 45 steps/epoch x 2 epochs
# = 90 steps; lr 2e-5 (full fine-tuning moves every weight, so two orders below LoRA's 1e-3).
from finetune import DataSpec, EvalSpec, FullSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="smollm2_full",
    model=ModelSpec(path="smollm2-135m-instruct", max_length=128),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca",
                  template="chatml", system=""),
    method=FullSpec(),
    training=TrainingSpec(num_train_epochs=2, per_device_train_batch_size=8, learning_rate=2e-5,
                          lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5),
    eval=EvalSpec(samples=8, max_new_tokens=24),
)
