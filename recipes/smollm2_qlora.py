# QLoRA on the embedded SmolLM2-135M-Instruct: LoRA over a 4-bit NF4 base. Runs on CPU here, unchanged on GPU.
#
#   python -m finetune.run recipes/smollm2_qlora.py
#
# Assumes: nothing but this repository (bitsandbytes' CPU path; on a GPU the compute dtype becomes bf16).
# Same data, template and batch as recipes/smollm2_lora.py (8 x ~35 tokens = ~280 tokens/step, 135 steps),
# so the two runs compare directly: the base's linear weights take 0.5 byte/param instead of 4 (fp32).
# Memory: 135M params -> ~0.54 GB fp32; the 211 linear layers (~106M params) in NF4 -> ~53 MB + embeddings
#         (28M params, kept in full precision) -> ~0.17 GB of weights (measured peak RSS: see README).
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.recipe import QuantSpec

recipe = Recipe(
    name="smollm2_qlora",
    model=ModelSpec(path="smollm2-135m-instruct", max_length=128,
                    quantization=QuantSpec(quant_type="nf4", double_quant=True, compute_dtype="auto")),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca",
                  template="chatml", system=""),
    method=LoraSpec(r=16, alpha=32, dropout=0.05),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-3,
                          lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5),
    eval=EvalSpec(samples=8, max_new_tokens=24),
)
