"""Build the tiny random-initialised BERT that B1's contenders all load (nothing is downloaded).

hidden 64, 2 layers, 2 heads, intermediate 128, and a WordPiece vocabulary of 8000 trained with
``tokenizers`` on the NCBI-disease training text. Weights are drawn with a fixed seed, so the same
folder is rebuilt bit for bit; the WordPiece trainer breaks frequency ties in hash-map order, so the vocabulary can
differ by a few rare pieces between builds: the folder is built once and cached, and
``fingerprint.txt`` (a hash of the weights and vocabulary) is recorded with every result.

Example (in the benchmark venv, which has transformers)::

    python benchmarks/tiny_bert.py benchmarks/.work/tiny-bert
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ncbi  # noqa: E402

CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)
VOCAB_SIZE = 8000
SEED = 0


def build(
    out_dir: Path | str,
    data_dir: Path | str = ncbi.DATA_DIR,
    *,
    force: bool = False,
    config: dict | None = None,
    vocab_size: int = VOCAB_SIZE,
    model_vocab_size: int | None = None,
) -> Path:
    """Write config, safetensors weights and tokenizer files to ``out_dir``; skip if present.

    ``config`` overrides the encoder's shape (B3 builds a BERT-base-sized one the same way);
    ``model_vocab_size`` pads the embedding table beyond the trained vocabulary.
    """
    out = Path(out_dir)
    if (out / "fingerprint.txt").exists() and not force:
        return out
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    texts = [d["text"] for d in ncbi.read_split("train", data_dir)]
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    wp.save_model(str(out))  # vocab.txt
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if "vocab_file" in inspect.signature(BertTokenizerFast.__init__).parameters:
        tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    else:  # transformers 5 takes the vocabulary itself
        tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    shape = {**CONFIG, **(config or {})}
    tok.model_max_length = shape["max_position_embeddings"]
    tok.save_pretrained(out)

    torch.manual_seed(SEED)
    bert_config = BertConfig(vocab_size=max(len(tok), model_vocab_size or 0), **shape)
    model = BertModel(bert_config, add_pooling_layer=False)
    model.save_pretrained(out)

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    h.update((out / "vocab.txt").read_bytes())
    (out / "fingerprint.txt").write_text(h.hexdigest()[:16] + "\n")
    return out


def fingerprint(model_dir: Path | str) -> str:
    """The hash written by :func:`build` (weights + vocabulary)."""
    return (Path(model_dir) / "fingerprint.txt").read_text().strip()


if __name__ == "__main__":
    path = build(
        sys.argv[1] if len(sys.argv) > 1 else "benchmarks/.work/tiny-bert",
        force="--force" in sys.argv,
    )
    print(path, fingerprint(path))
