"""Stage 3, quantize: candidates from the fp32 export, one per recipe (recipes are data)."""

from slmops.quantize.recipes import Recipe, load_recipes
from slmops.quantize.stage import quantize

__all__ = ["Recipe", "load_recipes", "quantize"]
