"""The trainer: recipes, the training loop, checkpoints, logging and scoring.

>>> from pureml.training import TrainingData, train   # doctest: +SKIP
"""

from .config import Recipe, RecipeError, TrainConfig, TrainingDataConfig
from .scorer import Scorer, ner_scores, span_attribute_scores
from .trainer import RunDirError, Trainer, TrainingData, TrainingInterrupted, train

__all__ = [
    "Recipe",
    "RecipeError",
    "RunDirError",
    "Scorer",
    "TrainConfig",
    "Trainer",
    "TrainingData",
    "TrainingDataConfig",
    "TrainingInterrupted",
    "ner_scores",
    "span_attribute_scores",
    "train",
]
