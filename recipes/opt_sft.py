# Full fine-tuning of OPT-350m on a plain text field, mirroring TRL's classic SFTTrainer example.
#
#   python -m finetune.run recipes/opt_sft.py model.path=/models/opt-350m
#
# Assumes: facebook/opt-350m on disk (nothing is downloaded), one GPU (a CPU also works, slowly).
# Data: JSONL {"text": ...}, trained on in full (TRL's dataset_text_field); the bundled
#       data/unicode_names/text.jsonl is a stand-in, use yours with data.train=...
# Memory: 331M params x (4 weight + 4 grad + 8 AdamW) B = 5.3 GB + activations.
# Batch: 64 x 16 accumulation x <= 512 tokens = <= 524,288 tokens/step at lr 1.41e-5 (TRL example's numbers).
from finetune import DataSpec, FullSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="opt_sft",
    model=ModelSpec(path="facebook/opt-350m", family="opt", max_length=512),
    data=DataSpec(train="data/unicode_names/text.jsonl", format="text", template="text", eval_split=0.05),
    method=FullSpec(),
    training=TrainingSpec(num_train_epochs=1, per_device_train_batch_size=64, gradient_accumulation_steps=16,
                          learning_rate=1.41e-5, lr_scheduler_type="linear", logging_steps=1),
)
