"""Documents, trainable components and pipelines.

>>> from pureml.nlp import Pipeline, ScratchEncoder, NerCrf, load
"""

from .component import Component, ForwardContext, pad_length
from .doc import Doc, Span
from .hash_embedding import ScratchEncoder
from .hf_transformer import HfTransformer  # imports transformers only when built
from .ner_crf import NerCrf
from .pipeline import Pipeline, load
from .span_classifier import SpanClassifier
from .span_pooler import SpanPooler

__all__ = [
    "Component",
    "Doc",
    "ForwardContext",
    "HfTransformer",
    "NerCrf",
    "Pipeline",
    "ScratchEncoder",
    "Span",
    "SpanClassifier",
    "SpanPooler",
    "load",
    "pad_length",
]
