"""metapl: preference learning with language models in JAX/Flax, centred on meta-learned general reward models.

Subpackages: `metapl.models` (transformers, heads, LoRA, sampling, checkpoints). See README.md.
"""

__version__ = "0.1.0.dev0"
