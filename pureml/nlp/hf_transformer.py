"""A Hugging Face encoder from a local folder as a word embedding (extra ``hf``).

Documents longer than the model's limit are cut into windows of ``window`` sub-word tokens
that start every ``stride`` tokens; each token takes its vector from the window where it sits
farthest from an edge (the most context on both sides). A word's vector is the mean of its
sub-word vectors. A batch's windows run in groups, each padded to its own width (the long
windows, and the short last windows of documents). Nothing is downloaded
(``local_files_only``), and ``transformers`` is imported only when this component is built, so
``pureml`` works without it.

The model's own dropout is switched off (its config's ``*dropout*`` rates are set to 0):
``nn.Dropout`` is not replayable. Dropout is applied to the word vectors with the pipeline's
counter-based RNG instead. A saved pipeline keeps the model config and tokenizer in
``<model dir>/<component name>/``, so it loads without the original folder.

>>> HfTransformer.factory
'hf_transformer'
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..registry import components
from .component import Component, ForwardContext, pad_length
from .doc import lone_surrogate


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "hf_transformer needs the 'hf' extra: pip install 'pureml[hf]' "
            "(transformers and tokenizers)"
        ) from e
    return transformers


@contextlib.contextmanager
def _quiet_loading(tf: Any) -> Iterator[None]:
    """No "LOAD REPORT" (the unused pooler weights of every encoder loaded without its head)
    nor progress bar while a model loads; transformers raises its real loading errors, and
    logs at error level stay."""
    logging = tf.utils.logging
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows that cover ``n_tokens`` tokens.

    >>> window_starts(10, 4, 3)
    [0, 3, 6]
    >>> window_starts(0, 4, 3)
    []
    """
    if n_tokens == 0:
        return []
    starts = [0]
    while starts[-1] + window < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


def best_window(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """For each token, ``(window index, position in that window)`` with the most context.

    >>> best_window(5, 3, 2)
    [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    """
    starts = window_starts(n_tokens, window, stride)
    out = []
    k = 0
    for t in range(n_tokens):
        while k + 1 < len(starts) and starts[k + 1] <= t:
            k += 1
        # candidates: the last window starting at or before t, and earlier ones still covering t
        best, best_margin = k, -1
        for j in range(k, -1, -1):
            start, end = starts[j], min(starts[j] + window, n_tokens)
            if t >= end:
                break
            margin = min(t - start, end - 1 - t)
            if margin > best_margin:
                best, best_margin = j, margin
        out.append((best, t - starts[best]))
    return out


def _best_window_tensors(n_tokens: int, starts: list[int], window: int) -> tuple:
    """:func:`best_window` as two tensors (window index, position), computed in a few tensor
    ops instead of a Python loop per token (the loop was half of the batch collation time).

    >>> k, pos = _best_window_tensors(5, window_starts(5, 3, 2), 3)
    >>> list(zip(k.tolist(), pos.tolist())) == best_window(5, 3, 2)
    True
    """
    if not starts:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    t = torch.arange(n_tokens).unsqueeze(1)
    begin = torch.tensor(starts, dtype=torch.int64)
    end = (begin + window).clamp(max=n_tokens)
    margin = torch.minimum(t - begin, end - 1 - t)
    margin = margin.masked_fill((t < begin) | (t >= end), -1)
    # ties go to the later window, as in best_window: argmax of the reversed windows
    k = len(starts) - 1 - margin.flip(1).argmax(1)
    return k, t.squeeze(1) - begin[k]


def _window_groups(
    lengths: list[int], window: int, fixed: bool
) -> tuple[list[list[int]], tuple[torch.Tensor, torch.Tensor]]:
    """Windows (by token count) in groups padded to their own widths, the long ones and the
    short ones, split where the padded size is least. Each document's last window is usually
    short: padded to one width, 16% of the encoder's positions were padding on B3's batches
    (256-word documents) and 13% on B1's (NCBI); split, 0% and 6%
    (benchmarks/encoder_cost.py).

    ``fixed`` (training batches, which a compiled step takes): always two groups of at least
    two rows (``-1`` fills them: a window of [CLS] [SEP] only), so the step sees the same
    structure at every batch and no size 0 or 1 that torch.compile would specialise. Otherwise
    (prediction, eager) one group where a split saves nothing, and no filler but for an empty
    batch (the model still runs once).

    Returns each group's row indices and, per row, its group and place in it.

    >>> _window_groups([128, 40, 128, 7, 128], 128, fixed=True)[0]
    [[0, 2, 4], [1, 3]]
    >>> _window_groups([5], 128, fixed=True)[0]
    [[0, -1], [-1, -1]]
    >>> _window_groups([5], 128, fixed=False)[0]
    [[0]]
    """
    order = sorted(range(len(lengths)), key=lambda r: (-lengths[r], r))
    order += [-1] * max(0, (4 if fixed else 1) - len(order))
    widths = [min(window, pad_length(max(lengths[r] if r >= 0 else 0, 1))) for r in order]
    n = len(order)
    cuts = range(2, n - 1) if fixed else range(1, n + 1)  # cut == n: no second group

    def padded(k: int) -> tuple[int, int]:  # ties go to fewer groups, then to longer groups
        return k * widths[0] + (n - k) * (widths[k] if k < n else 0), -k

    cut = min(cuts, key=padded)
    groups = [sorted(g, key=_filler_last) for g in (order[:cut], order[cut:]) if g]
    group = torch.zeros(len(lengths), dtype=torch.int64)
    index = torch.zeros(len(lengths), dtype=torch.int64)
    for g, members in enumerate(groups):
        for j, r in enumerate(members):
            if r >= 0:
                group[r], index[r] = g, j
    return groups, (group, index)


def _position_limit(model: Any, config: Any) -> tuple[int | None, str]:
    """How many tokens (special ones included) a sequence of ``model`` may hold, and why.

    RoBERTa-style embeddings (RoBERTa, CamemBERT, XLM-R: a position table with a
    ``padding_idx``) number positions from ``padding_idx + 1``, so a RoBERTa with
    ``max_position_embeddings = 514`` takes 512 tokens.
    """
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None, ""
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    pad = getattr(table, "padding_idx", None)
    if pad is not None:
        return limit - pad - 1, (
            f"max_position_embeddings {limit}, numbered from padding_idx {pad} + 1"
        )
    return limit, f"max_position_embeddings {limit}"


def _filler_last(r: int) -> tuple[bool, int]:
    return r < 0, r


# Distinct words whose sub-word ids are kept (about 100 bytes each); the cache is emptied when full.
WORD_CACHE_SIZE = 1 << 18


@components.register("hf_transformer")
class HfTransformer(Component):
    """Word vectors ``[B, L, hidden]`` from a local Hugging Face encoder.

    Args:
        model: path of a folder saved with ``save_pretrained`` (model and tokenizer).
        window: sub-word tokens per window (without the special tokens); at most the model's
            ``max_position_embeddings`` minus the special tokens.
        stride: tokens between window starts (``stride <= window``; overlap = window - stride).
        dropout: rate on the word vectors.
    """

    factory = "hf_transformer"

    def __init__(
        self, model: str, window: int = 128, stride: int = 96, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if not 0 < stride <= window:
            raise ValueError(f"need 0 < stride <= window, got stride={stride}, window={window}")
        self.model_path = str(model)
        self.window = window
        self.stride = stride
        self.p = dropout
        self._saved: Path | None = None
        self._built = False
        self._word_ids: dict[str, tuple[int, ...]] = {}  # the tokenizer's ids of each word seen

    def config(self) -> dict[str, Any]:
        return dict(model=self.model_path, window=self.window, stride=self.stride, dropout=self.p)

    def initialize(self) -> None:
        if self._built:
            return
        tf = _transformers()
        source = self._saved or Path(self.model_path)
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model config at {source / 'config.json'}")
        config = tf.AutoConfig.from_pretrained(source, local_files_only=True)
        for name in list(config.to_dict()):
            if "dropout" in name and isinstance(getattr(config, name, None), float):
                setattr(config, name, 0.0)
        if self._saved is not None:  # weights come from the pipeline's safetensors
            self.model = tf.AutoModel.from_config(config)
        else:
            # never unpickle a model folder's weights (pytorch_model.bin can run code): safetensors only
            if not any(source.glob("*.safetensors")):
                raise FileNotFoundError(
                    f"no safetensors weights in {source}: pureml does not load pickled weights "
                    "(pytorch_model.bin); convert them with save_pretrained(safe_serialization=True)"
                )
            with _quiet_loading(tf):
                self.model = tf.AutoModel.from_pretrained(
                    source, config=config, local_files_only=True, use_safetensors=True
                )
        self.tokenizer = tf.AutoTokenizer.from_pretrained(source, local_files_only=True)
        if getattr(self.tokenizer, "add_prefix_space", None) is False:
            # byte-level BPE (RoBERTa): a word tokenized alone gets the pieces it has in running
            # text ("Ġpatient", not "pat" "ient") only with a prefix space
            self.tokenizer = tf.AutoTokenizer.from_pretrained(
                source, local_files_only=True, add_prefix_space=True
            )
        missing = [
            name
            for name in ("cls_token", "sep_token", "pad_token")
            if getattr(self.tokenizer, name + "_id", None) is None
        ]
        if missing:  # each window is [CLS] pieces [SEP], padded with the pad token
            raise ValueError(
                f"the tokenizer in {source} has no {', '.join(missing)}: hf_transformer frames "
                "each window with cls_token and sep_token and pads with pad_token; set them in "
                "its tokenizer_config.json"
            )
        vocab_size = getattr(config, "vocab_size", None)
        max_id = max(self.tokenizer.get_vocab().values(), default=-1)
        if vocab_size is not None and max_id >= vocab_size:
            # else an IndexError deep inside the embedding, at the first word with such an id
            raise ValueError(
                f"the tokenizer in {source} gives ids up to {max_id}, but the model has "
                f"{vocab_size} embeddings (vocab_size in {source / 'config.json'}): a tokenizer "
                "of another model? save the model and its own tokenizer in one folder"
            )
        self._word_ids = {}
        limit, why = _position_limit(self.model, config)
        if limit is not None and self.window + 2 > limit:
            raise ValueError(
                f"window {self.window} + 2 special tokens exceeds the model's {limit} positions "
                f"({why}; {source}): set window <= {limit - 2}"
            )
        self.output_size = config.hidden_size
        self._built = True

    def to_disk(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def from_disk(self, path: str | os.PathLike) -> None:
        self._saved = Path(path)

    # -- data -------------------------------------------------------------------------------
    def preprocess(self, doc, supervision: bool = False) -> dict[str, Any]:
        words = doc.word_texts()
        try:
            pieces = self._pieces(words) if words else []
        except TypeError:  # the tokenizers' "TextEncodeInput must be ..." for half a character
            at = lone_surrogate(doc.text)
            if at is None:
                raise
            raise ValueError(
                f"{self.name}: doc {doc.id!r} has a lone surrogate {doc.text[at]!r} at character "
                f"{at} (half of a UTF-16 pair, as a broken export writes a split emoji), which "
                "the tokenizer cannot encode: fix or remove it in the text"
            ) from None
        unk = self.tokenizer.unk_token_id
        pieces = [p or (unk,) for p in pieces]
        ids = [t for p in pieces for t in p]
        n = len(ids)
        # Each token's window is fixed by the document alone: found here, once per training
        # document (features are cached), not in every batch's collate.
        starts = window_starts(n, self.window, self.stride)
        window, position = _best_window_tensors(n, starts, self.window)
        return {
            "ids": torch.tensor(ids, dtype=torch.int64),
            "starts": starts,
            # int32: these stay cached for the whole run (half the memory of int64)
            "word_of": torch.tensor(
                [w for w, p in enumerate(pieces) for _ in p], dtype=torch.int32
            ),
            "window": window.to(torch.int32),
            "position": position.to(torch.int32),
            "n_words": len(words),
            "training": supervision,  # batches of training items keep one structure (collate)
            "stats": {"words": len(words), "tokens": n},
        }

    def _pieces(self, words: list[str]) -> list[tuple[int, ...]]:
        """Sub-word ids of each word (empty for a word the tokenizer drops).

        Each word is tokenized on its own (as one sequence without special tokens, with a
        prefix space where the tokenizer marks word starts by one), so its ids do not depend on
        its neighbours and are cached by word: documents repeat most of their
        words, and the tokenizer then sees each distinct word once.
        """
        cache = self._word_ids
        missing = [w for w in dict.fromkeys(words) if w not in cache]
        if missing:
            if len(cache) + len(missing) > WORD_CACHE_SIZE:
                # a new dict, not clear(): a call in another thread (the trainer's prefetch
                # thread beside a validation in the main one) keeps reading the one it holds
                self._word_ids = cache = {}
            encoded = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            cache.update(zip(missing, map(tuple, encoded)))
        return [cache[w] for w in words]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        tok = self.tokenizer
        length = pad_length(max((f["n_words"] for f in features), default=0))
        rows: list[torch.Tensor] = []  # each window's sub-word ids, documents in order
        window, position, word = [], [], []  # per token: global window index, place, word slot
        for i, f in enumerate(features):
            if not f["starts"]:
                continue
            window.append(f["window"] + len(rows))
            position.append(f["position"])
            word.append(f["word_of"] + i * length)
            rows.extend(f["ids"][s : s + self.window] for s in f["starts"])
        fixed = any(f.get("training", False) for f in features)
        sizes = [len(r) for r in rows]
        groups, (group, index) = _window_groups(sizes, self.window, fixed)
        windows = [self._frame(rows, sizes, members, tok) for members in groups]
        # where row r's position p lands once both groups' outputs are flattened and concatenated
        base = torch.tensor([0, *[w["input_ids"].numel() for w in windows[:-1]]]).cumsum(0)
        width = torch.tensor([w["input_ids"].shape[1] for w in windows])
        empty = torch.zeros(0, dtype=torch.int64)
        if rows:
            k = torch.cat(window).long()
            token_index = base[group[k]] + index[k] * width[group[k]] + torch.cat(position) + 1
            token_word = torch.cat(word).long()
        else:
            token_index, token_word = empty, empty
        count = torch.zeros(len(features) * length).index_add_(
            0, token_word, torch.ones(len(token_word), dtype=torch.float32)
        )
        mask = torch.arange(length) < torch.tensor([f["n_words"] for f in features]).unsqueeze(-1)
        return {
            "windows": windows,
            "token_index": token_index,
            "token_word": token_word,
            "word_weight": 1.0 / count.clamp(min=1.0),
            "mask": mask,
        }

    def _frame(
        self, rows: list[torch.Tensor], sizes: list[int], members: list[int], tok: Any
    ) -> dict[str, torch.Tensor]:
        """One group's windows as ``[CLS] pieces [SEP]`` rows padded to the group's width
        (members numbered -1 are filler: ``[CLS] [SEP]`` only)."""
        n = torch.tensor([sizes[r] if r >= 0 else 0 for r in members])
        width = min(self.window, pad_length(max(int(n.max()), 1))) + 2
        input_ids = torch.full((len(members), width), tok.pad_token_id, dtype=torch.int64)
        real = [rows[r] for r in members if r >= 0]
        if real:  # row-major order of the mask is the order of the rows' pieces end to end
            input_ids[:, 1 : width - 1][torch.arange(width - 2) < n.unsqueeze(-1)] = torch.cat(real)
        input_ids[:, 0] = tok.cls_token_id
        input_ids[torch.arange(len(members)), n + 1] = tok.sep_token_id
        attention = (torch.arange(width) < (n + 2).unsqueeze(-1)).to(torch.int64)
        return {"input_ids": input_ids, "attention_mask": attention}

    # -- model ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], ctx: ForwardContext) -> dict[str, Any]:
        out = torch.cat([self.model(**w).last_hidden_state.flatten(0, 1) for w in batch["windows"]])
        hidden = out.shape[-1]
        tokens = out[batch["token_index"]]
        mask = batch["mask"]
        words = tokens.new_zeros(mask.numel(), hidden).index_add(0, batch["token_word"], tokens)
        words = (words * batch["word_weight"].unsqueeze(-1).to(words.dtype)).view(
            *mask.shape, hidden
        )
        words = ctx.dropout(words, self.p, self.name)
        return {"embeddings": words, "mask": mask}


def encoder_selector(nlp: Any) -> str | None:
    """A regex selecting the parameters of ``nlp``'s Hugging Face encoders, or None if it has
    none: what EDS-NLP's default optimizer puts in its "transformer" group (by type, whatever
    the component is called).

    >>> from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
    >>> print(encoder_selector(Pipeline({"embedding": ScratchEncoder(), "ner": NerCrf()})))
    None
    """
    names = [n for n in nlp.pipe_names if isinstance(nlp.get_pipe(n), HfTransformer)]
    return "^(" + "|".join(map(re.escape, names)) + r")\." if names else None
