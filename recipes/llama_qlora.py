# QLoRA on Llama-2-7B (NF4, double quantisation, bf16 compute) with the DialogSum prompt from the QLoRA write-up.
#
#   python -m finetune.run recipes/llama_qlora.py model.path=/models/Llama-2-7b-hf data.train=dialogsum.jsonl
#
# Assumes: Llama-2-7B (or Llama-3-8B-Instruct: model.path=... data.template=tokenizer) on disk, one GPU with
# >= 12 GB and bf16 (Ampere or newer); DialogSum as JSONL {"dialogue": ..., "summary": ...}.
# Memory: 6.7B params x 0.5 byte (NF4) + 0.127 bit/param of double-quantised constants = ~3.5 GB of weights;
#         LoRA r=64 on the 7 linear layers x 32 blocks = 160M params -> 160M x (4 + 4 + 8) B = 2.6 GB with
#         AdamW in fp32 (paged 8-bit AdamW: ~1.0 GB); activations recomputed (checkpointing): ~3 GB at
#         1 x 1024 tokens. Total ~9-10 GB, vs ~27 GB for bf16 LoRA (13.5 GB of frozen bf16 weights alone).
# Batch: 1 x 16 accumulation x <= 1,024 tokens = <= 16,384 tokens/step; 1,000 steps at lr 2e-4, constant.
from finetune import DataSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.recipe import QuantSpec

recipe = Recipe(
    name="llama_qlora",
    model=ModelSpec(path="meta-llama/Llama-2-7b-hf", family="llama", max_length=1024,
                    quantization=QuantSpec(quant_type="nf4", double_quant=True, compute_dtype="bfloat16")),
    data=DataSpec(train="data/dialogsum/train.jsonl", format="adgen", prompt_column="dialogue",
                  response_column="summary", template="dialogsum", eval_split=0.05),
    method=LoraSpec(r=64, alpha=16, dropout=0.1),
    training=TrainingSpec(max_steps=1000, per_device_train_batch_size=1, gradient_accumulation_steps=16,
                          learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0.03,
                          activation_checkpointing=True, optim="paged_adamw_8bit", logging_steps=25,
                          save_strategy="steps", save_steps=250),
)
