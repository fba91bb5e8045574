"""`sae-native demo`: find a concept's feature in SmolLM2 and steer the model with it."""
from .concepts import CONCEPTS
from .pipeline import BUDGETS, run

__all__ = ["run", "CONCEPTS", "BUDGETS"]
