"""B1 / B3 contender: the training loop a PyTorch user would write by hand.

A Hugging Face ``BertModel`` (nn.Module) embeds EDS-style windows of word pieces (128 pieces,
stride 96, the centre of each overlap kept), words are the mean of their pieces, a linear layer
gives BIOUL tag scores, and a linear-chain CRF with the BIOUL constraints (sequential forward
algorithm, Viterbi decoding) gives the loss, summed over documents and divided by the number of
words of the batch. ``torch.optim.AdamW`` (weight decay 0.01), a ``LambdaLR`` linear warm-up over
10% of the steps then linear decay to 0, ``clip_grad_norm_(1.0)``. Documents are read and
preprocessed once; each epoch is a seeded shuffle cut greedily into batches of "2000 words".

Example::

    benchmarks/.work/venv/bin/python benchmarks/eager_loop.py --model benchmarks/.work/tiny-bert --out r.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ncbi  # noqa: E402

WINDOW, STRIDE = 128, 96
O, B, I, L, U = 0, 1, 2, 3, 4  # noqa: E741 — tag of label k is 1 + 4 * k + (B-1 | I-1 | L-1 | U-1)


def bioul_constraints(num_labels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Allowed (prev, next), start and end tags for BIOUL over ``num_labels`` labels."""
    n = 1 + 4 * num_labels

    def tag(k: int, t: int) -> int:
        return 1 + 4 * k + (t - 1)

    allowed = torch.zeros(n, n, dtype=torch.bool)
    start = torch.zeros(n, dtype=torch.bool)
    end = torch.zeros(n, dtype=torch.bool)
    closed = [O] + [tag(k, t) for k in range(num_labels) for t in (L, U)]
    opening = [O] + [tag(k, t) for k in range(num_labels) for t in (B, U)]
    for a in closed:
        for b in opening:
            allowed[a, b] = True
    for k in range(num_labels):
        for a in (tag(k, B), tag(k, I)):
            allowed[a, tag(k, I)] = True
            allowed[a, tag(k, L)] = True
    start[opening] = True
    end[closed] = True
    return allowed, start, end


class CRF(nn.Module):
    """Linear-chain CRF with hard BIOUL constraints (the textbook sequential algorithms)."""

    def __init__(self, num_labels: int):
        super().__init__()
        allowed, start, end = bioul_constraints(num_labels)
        n = allowed.shape[0]
        self.transitions = nn.Parameter(torch.zeros(n, n))
        self.start = nn.Parameter(torch.zeros(n))
        self.end = nn.Parameter(torch.zeros(n))
        self.register_buffer("forbid", ~allowed, persistent=False)
        self.register_buffer("forbid_start", ~start, persistent=False)
        self.register_buffer("forbid_end", ~end, persistent=False)

    def _masked(self) -> tuple[Tensor, Tensor, Tensor]:
        neg = -1e4
        return (
            self.transitions.masked_fill(self.forbid, neg),
            self.start.masked_fill(self.forbid_start, neg),
            self.end.masked_fill(self.forbid_end, neg),
        )

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Sum over sequences of -log p(tags | emissions); emissions (B, T, n), mask (B, T)."""
        trans, start, end = self._masked()
        emissions = emissions.float()
        bsz, length, _ = emissions.shape
        lengths = mask.sum(1)
        # gold path score
        first = emissions[:, 0].gather(1, tags[:, :1]).squeeze(1) + start[tags[:, 0]]
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)[:, 1:]
        step = trans[tags[:, :-1], tags[:, 1:]]
        gold = first + ((emit + step) * mask[:, 1:]).sum(1)
        last_tag = tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
        gold = gold + end[last_tag]
        # partition function
        alpha = emissions[:, 0] + start
        for t in range(1, length):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t : t + 1], nxt, alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)
        return (log_z - gold).sum()

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        trans, start, end = self._masked()
        emissions = emissions.float()
        bsz, length, _ = emissions.shape
        score = emissions[:, 0] + start
        back = []
        for t in range(1, length):
            best, idx = (score.unsqueeze(2) + trans).max(dim=1)
            nxt = best + emissions[:, t]
            keep = mask[:, t : t + 1]
            score = torch.where(keep, nxt, score)
            back.append(
                torch.where(keep, idx, torch.arange(idx.shape[1], device=idx.device).expand_as(idx))
            )
        score = score + end
        paths = []
        lengths = mask.sum(1).tolist()
        best_last = score.argmax(1).tolist()
        back_t = torch.stack(back, 1).tolist() if back else [[] for _ in range(bsz)]
        for b in range(bsz):
            tag = best_last[b]
            path = [tag]
            for t in range(lengths[b] - 2, -1, -1):
                tag = back_t[b][t][tag]
                path.append(tag)
            paths.append(path[::-1])
        return paths


class Tagger(nn.Module):
    """Encoder (any HF model returning ``last_hidden_state``) + word pooling + linear + CRF."""

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.linear = nn.Linear(hidden, 1 + 4 * num_labels)
        self.crf = CRF(num_labels)

    def emissions(self, batch: dict) -> Tensor:
        states = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        flat = states.reshape(-1, states.shape[-1])[batch["piece_index"]]
        n_words = batch["word_mask"].numel()
        words = flat.new_zeros(n_words, flat.shape[-1]).index_add_(0, batch["piece_word"], flat)
        words = words / batch["word_pieces"].unsqueeze(1)
        return self.linear(words.view(*batch["word_mask"].shape, -1))

    def forward(self, batch: dict) -> Tensor:
        em = self.emissions(batch)
        return self.crf.nll(em, batch["tags"], batch["word_mask"]) / batch["n_words"]


def preprocess(doc: dict, tokenizer, labels: list[str]) -> dict:
    """Words (pureml's rule), their word pieces and BIOUL tags; overlapping gold spans: first wins."""
    words = ncbi.word_offsets(doc["text"])
    tags = [O] * len(words)
    starts = {s: i for i, (s, _) in enumerate(words)}
    ends = {e: i for i, (_, e) in enumerate(words)}
    for start, end, label in sorted(doc.get("spans", []), key=lambda s: (s[0], -s[1])):
        if start not in starts or end not in ends:
            continue  # boundary inside a word: not representable
        a, b = starts[start], ends[end]
        if any(t != O for t in tags[a : b + 1]):
            continue
        base = 1 + 4 * labels.index(label)
        if a == b:
            tags[a] = base + U - 1
        else:
            tags[a] = base + B - 1
            tags[a + 1 : b] = [base + I - 1] * (b - a - 1)
            tags[b] = base + L - 1
    enc = tokenizer(
        [doc["text"][s:e] for s, e in words], is_split_into_words=True, add_special_tokens=False
    )
    return {
        "id": doc["id"],
        "words": words,
        "tags": tags,
        "ids": enc["input_ids"],
        "piece_word": enc.word_ids(),
    }


def collate(items: list[dict], cls_id: int, sep_id: int, device: str = "cpu") -> dict:
    """Pad EDS-style windows of word pieces and words; index tensors for pooling."""
    windows, piece_index, piece_word = [], [], []
    max_words = max(len(it["words"]) for it in items)
    word_pieces = torch.zeros(len(items) * max_words)
    overlap = WINDOW - STRIDE
    for d, it in enumerate(items):
        ids = it["ids"]
        offsets = list(range(0, max(len(ids) - overlap, 1), STRIDE))
        for k, off in enumerate(offsets):
            chunk = ids[off : off + WINDOW]
            left = overlap // 2 if off > 0 else 0
            right = (overlap + 1) // 2 if k < len(offsets) - 1 else 0
            for p in range(left, len(chunk) - right):
                piece_index.append((len(windows), 1 + p))
                piece_word.append(d * max_words + it["piece_word"][off + p])
            windows.append([cls_id, *chunk, sep_id])
    width = max(len(w) for w in windows)
    input_ids = torch.zeros(len(windows), width, dtype=torch.long)
    attention = torch.zeros(len(windows), width, dtype=torch.long)
    for i, w in enumerate(windows):
        input_ids[i, : len(w)] = torch.tensor(w)
        attention[i, : len(w)] = 1
    flat_index = torch.tensor([w * width + p for w, p in piece_index], dtype=torch.long)
    piece_word_t = torch.tensor(piece_word, dtype=torch.long)
    word_pieces.index_add_(0, piece_word_t, torch.ones(len(piece_word)))
    tags = torch.zeros(len(items), max_words, dtype=torch.long)
    word_mask = torch.zeros(len(items), max_words, dtype=torch.bool)
    for d, it in enumerate(items):
        tags[d, : len(it["tags"])] = torch.tensor(it["tags"])
        word_mask[d, : len(it["words"])] = True
    n_words = sum(len(it["words"]) for it in items)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "piece_index": flat_index,
        "piece_word": piece_word_t,
        "word_pieces": word_pieces.clamp(min=1),
        "tags": tags,
        "word_mask": word_mask,
        "n_words": torch.tensor(float(n_words)),
    }
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def batches(items: list[dict], max_words: int, seed: int) -> Iterator[list[dict]]:
    """Loop forever: epoch e is ``random.Random(seed + e)``'s shuffle, cut greedily by words."""
    epoch = 0
    while True:
        order = list(items)
        random.Random(seed + epoch).shuffle(order)
        batch, total = [], 0
        for it in order:
            n = len(it["words"])
            if batch and total + n > max_words:
                yield batch
                batch, total = [], 0
            batch.append(it)
            total += n
        if batch:
            yield batch
        epoch += 1


def linear_warmup_decay(total: int, warmup_rate: float = 0.1):
    """EDS-NLP's ``linear`` schedule as a LambdaLR factor: 0 -> 1 over the warm-up, then -> 0."""
    warm = total * warmup_rate

    def factor(step: int) -> float:
        if step < warm:
            return step / warm
        return max(0.0, 1.0 - (step - warm) / max(1.0, total - warm))

    return factor


def tags_to_spans(tags: list[int], words: list[tuple[int, int]], labels: list[str]) -> list:
    spans, open_at = [], None
    for i, t in enumerate(tags):
        if t == O:
            open_at = None
            continue
        k, kind = divmod(t - 1, 4)
        kind += 1
        if kind == U:
            spans.append((words[i][0], words[i][1], labels[k]))
            open_at = None
        elif kind == B:
            open_at = (i, k)
        elif kind == L and open_at is not None and open_at[1] == k:
            spans.append((words[open_at[0]][0], words[i][1], labels[k]))
            open_at = None
    return spans


def predict(
    model: Tagger, items: list[dict], labels: list[str], cls_id: int, sep_id: int, device="cpu"
) -> dict:
    model.eval()
    out = {}
    with torch.no_grad():
        for i in range(0, len(items), 16):
            chunk = items[i : i + 16]
            batch = collate(chunk, cls_id, sep_id, device=device)
            paths = model.crf.decode(model.emissions(batch), batch["word_mask"])
            for it, path in zip(chunk, paths):
                out[it["id"]] = sorted(set(tags_to_spans(path, it["words"], labels)))
    model.train()
    return out


def model_flops(batch: dict, config) -> float:
    """Training FLOPs of the encoder on ``batch`` (forward + backward = 3x forward), counting
    real tokens only: 6 x dense weights per token + 12 x layers x width x length^2 per window
    for attention; embeddings, the CRF and pooling are left out (they are small)."""
    d, layers, ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    lengths = batch["attention_mask"].sum(1).double()
    dense = layers * (4 * d * d + 2 * d * ff)
    return float(6 * dense * lengths.sum() + 12 * layers * d * (lengths**2).sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(ncbi.DATA_DIR))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-words", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast the encoder to bfloat16")
    ap.add_argument("--fused", action="store_true", help="torch.optim.AdamW(fused=True)")
    ap.add_argument("--no-predict", action="store_true", help="skip the dev predictions")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    import transformers
    from transformers import AutoModel, AutoTokenizer

    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_docs = ncbi.read_split("train", args.data)
    labels = sorted({s[2] for d in train_docs for s in d["spans"]})
    items = [preprocess(d, tokenizer, labels) for d in train_docs]
    model = Tagger(AutoModel.from_pretrained(args.model), len(labels)).to(device)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=3e-3, weight_decay=0.01, **({"fused": True} if args.fused else {})
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(args.steps))
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )

    stamps, words, losses, flops = [], [], [], []
    stream = batches(items, args.batch_words, args.seed)
    t_setup = time.perf_counter()
    for _ in range(args.steps):
        stamps.append(time.perf_counter())
        docs = next(stream)
        batch = collate(docs, cls_id, sep_id, device=device)
        with autocast:
            loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        words.append(float(batch["n_words"]))
        flops.append(model_flops(batch, model.encoder.config))
        losses.append(loss.item())  # also waits for the GPU: step times are real
    t_end = time.perf_counter()

    result = {
        "contender": "eager",
        "step_times": [b - a for a, b in zip(stamps, stamps[1:] + [t_end])],
        "step_words": words,
        "step_flops": flops,
        "losses": losses,
        "setup_s": t_setup - t_start,
        "train_s": t_end - t_setup,
        "threads": args.threads,
        "device": str(device),
        "bf16": args.bf16,
        "fused": args.fused,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if device.type == "cuda":
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if not args.no_predict:
        dev = ncbi.read_split("devel", args.data)
        dev_items = [preprocess(d, tokenizer, labels) for d in dev]
        t_pred = time.perf_counter()
        preds = predict(model, dev_items, labels, cls_id, sep_id, device)
        result["predict_s"] = time.perf_counter() - t_pred
        result["dev"] = ncbi.score(ncbi.gold_of(dev), preds)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
