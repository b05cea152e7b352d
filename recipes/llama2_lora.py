# LoRA on Llama-2-7B with Meta's [INST] <<SYS>> chat format, for a GPU user with the weights on disk.
#
#   python -m finetune.run recipes/llama2_lora.py model.path=/models/Llama-2-7b-hf data.train=my_alpaca.jsonl
#
# Assumes: the Llama-2-7B weights in a local folder or the Hugging Face cache (nothing is downloaded; the run
# stops with instructions if they are missing), one GPU with >= 24 GB.
# Memory: 6.7B params x 2 bytes (bf16) = 13.5 GB of frozen weights; LoRA r=16 on the 7 linear layers of 32
#         blocks = 40M trainable params -> 40M x (4 weight + 4 grad + 8 Adam) bytes = 0.64 GB; activations
#         are recomputed (activation_checkpointing), leaving ~6 GB for a 4 x 512-token micro-batch.
# Batch: 4 x 4 accumulation x 512 tokens = 8,192 tokens/step (at most); 3 epochs at lr 2e-4, cosine.
from finetune import DataSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="llama2_lora",
    model=ModelSpec(path="meta-llama/Llama-2-7b-hf", family="llama", max_length=512),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca",
                  template="llama2"),
    method=LoraSpec(r=16, alpha=32, dropout=0.05),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                          learning_rate=2e-4, warmup_steps=0.03, activation_checkpointing=True, logging_steps=10),
)
