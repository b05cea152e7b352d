# QLoRA on the embedded SmolLM2-135M-Instruct: recipes/smollm2_lora.py over a 4-bit NF4 base. `make demo-qlora`.
#
#   python -m finetune.run recipes/smollm2_qlora.py
#
# Assumes: nothing but this repository (bitsandbytes' CPU path; on a GPU the compute dtype becomes bf16).
# Everything else is the LoRA recipe's (8 x ~35 tokens = ~280 tokens/step, 135 steps), so the two compare
# directly. Memory: the 210 linear layers (~106M params) in NF4 take 0.5 byte/param + double-quantised constants
# instead of 4 (fp32); embeddings (28M params) stay full precision -> 159 MB of weights instead of 513 MB.
import dataclasses
from pathlib import Path

from finetune.recipe import QuantSpec
from finetune.run import load_recipe

lora = load_recipe(Path(__file__).with_name("smollm2_lora.py"))
recipe = dataclasses.replace(
    lora, name="smollm2_qlora",
    model=dataclasses.replace(lora.model, quantization=QuantSpec(quant_type="nf4", double_quant=True,
                                                                 compute_dtype="auto")),
)
