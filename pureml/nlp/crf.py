"""A linear-chain CRF as pure functions, and the BIOUL tag scheme it decodes.

The log-partition is a product of L-1 transfer matrices in the (logsumexp, +) semiring. A
sequential forward algorithm needs L dependent steps (slow eager, and compiling it unrolls the
loop, so compile time grows with the length); here the product is reduced as a balanced tree:
O(log L) dependent steps, each one batched over documents and positions. Padded positions
contribute the semiring identity, so variable lengths need no special path, and the tree is
padded to a power of two so that one compiled graph serves every length of an octave. The
gradient is not autograd through the tree (two matrix products per node, every level kept):
the tree is swept back down with vectors for the forward-backward marginals, which are the
gradient, and a first-order surrogate hands them to autograd.

Tags: ``0`` is ``O``; label ``k`` (0-based) owns tags ``1 + 4k + (B, I, L, U)``.

>>> tags = bioul_encode([(1, 3, 0)], 4)
>>> tags
[0, 1, 3, 0]
>>> bioul_decode(tags)
[(1, 3, 0)]
"""

from __future__ import annotations

import math

import torch

# Large but finite: -inf would give NaN gradients where a whole logsumexp row is forbidden.
NEG = -1e4

B_, I_, L_, U_ = 0, 1, 2, 3


def num_tags(n_labels: int) -> int:
    """Number of BIOUL tags for ``n_labels`` labels (``O`` plus four per label)."""
    return 1 + 4 * n_labels


def tag_names(labels: list[str]) -> list[str]:
    """Human-readable tag names, in tag-index order: ``["O", "B-X", "I-X", "L-X", "U-X", ...]``."""
    return ["O"] + [f"{p}-{lab}" for lab in labels for p in "BILU"]


def bioul_encode(spans: list[tuple[int, int, int]], n_words: int) -> list[int]:
    """Tag indices for non-overlapping word spans ``(first, last_exclusive, label_index)``.

    Overlapping spans raise ``ValueError`` (filter them before; see ``drop_overlaps``).
    """
    tags = [0] * n_words
    for first, last, lab in sorted(spans):
        if not 0 <= first < last <= n_words:
            raise ValueError(f"span ({first}, {last}) outside a document of {n_words} words")
        if any(tags[first:last]):
            raise ValueError(f"span ({first}, {last}) overlaps another span")
        base = 1 + 4 * lab
        if last - first == 1:
            tags[first] = base + U_
        else:
            tags[first] = base + B_
            for i in range(first + 1, last - 1):
                tags[i] = base + I_
            tags[last - 1] = base + L_
    return tags


def bioul_decode(tags: list[int]) -> list[tuple[int, int, int]]:
    """Word spans ``(first, last_exclusive, label_index)`` of a tag sequence.

    Valid sequences (all that constrained Viterbi produces) round-trip exactly; on invalid ones
    a ``B``/``I`` run is closed at the next tag that cannot continue it.
    """
    spans = []
    start, label = None, None
    for i, t in enumerate(tags):
        if t == 0:
            if start is not None:
                spans.append((start, i, label))
            start, label = None, None
            continue
        lab, pos = divmod(t - 1, 4)
        if pos in (I_, L_) and start is not None and label == lab:
            if pos == L_:
                spans.append((start, i + 1, lab))
                start, label = None, None
            continue
        if start is not None:
            spans.append((start, i, label))
            start, label = None, None
        if pos in (U_, L_):
            spans.append((i, i + 1, lab))
        else:
            start, label = i, lab
    if start is not None:
        spans.append((start, len(tags), label))
    return spans


def drop_overlaps(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Keep a non-overlapping subset: longest spans first, then leftmost."""
    kept: list[tuple[int, int, int]] = []
    taken: set[int] = set()
    for s in sorted(spans, key=lambda s: (s[0] - s[1], s[0])):
        if s[0] < s[1] and not taken.intersection(range(s[0], s[1])):
            kept.append(s)
            taken.update(range(s[0], s[1]))
    return sorted(kept)


def bioul_constraints(n_labels: int, dtype: torch.dtype = torch.float32):
    """Additive masks ``(transitions [T, T], start [T], end [T])``: 0 where allowed, ``NEG`` not.

    Allowed: ``O|L|U -> O|B|U``, ``B|I -> I|L`` of the same label; start in ``O|B|U``; end in
    ``O|L|U``.
    """
    n = num_tags(n_labels)
    trans = torch.full((n, n), NEG, dtype=dtype)
    start = torch.full((n,), NEG, dtype=dtype)
    end = torch.full((n,), NEG, dtype=dtype)

    def kind(t):
        return None if t == 0 else divmod(t - 1, 4)

    for a in range(n):
        ka = kind(a)
        if ka is None or ka[1] in (B_, U_):
            start[a] = 0
        if ka is None or ka[1] in (L_, U_):
            end[a] = 0
        for b in range(n):
            kb = kind(b)
            closes = ka is None or ka[1] in (L_, U_)
            opens = kb is None or kb[1] in (B_, U_)
            continues = (
                ka is not None
                and kb is not None
                and ka[0] == kb[0]
                and ka[1] in (B_, I_)
                and kb[1] in (I_, L_)
            )
            if (closes and opens) or continues:
                trans[a, b] = 0
    return trans, start, end


# Where a row of a scaled product is all zeros (every path through it forbidden or lost), its
# scale: the log of this stays finite (-690) where log(0) = -inf would make NaN (-inf + inf)
# further on.
TINY = 1e-300


# A batch of (logsumexp, +) matrices held as real ones (u, R, v): ``log M[i, j] = u[i] + v[j] +
# log R[i, j]`` with ``R >= 0`` and rows scaled to a maximum of 1. Multiplying two costs one real
# matrix product, T exponentials and T logarithms, where the log-domain product costs 3 T^2
# transcendentals (exponentials of both sides shifted by their maxima, the log of the result):
# the tree spent most of its time in those. Entries are lost only where one position's scores
# spread over more than ~700 nats, as with log-domain shifts (tests/nlp/test_crf.py).
_Scaled = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _scaled(u: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> _Scaled:
    top = r.amax(-1, keepdim=True).clamp(min=TINY)
    return u + top.squeeze(-1).log(), r / top, v


def _scaled_product(a: _Scaled, b: _Scaled) -> _Scaled:
    """``a (x) b``: sum_k R_a[i, k] exp(v_a[k] + u_b[k]) R_b[k, j], the exponentials shifted by
    their maximum."""
    inner = a[2] + b[0]
    top = inner.amax(-1, keepdim=True)
    return _scaled(a[0] + top, a[1] @ (torch.exp(inner - top).unsqueeze(-1) * b[1]), b[2])


def _scaled_halves(m: _Scaled) -> tuple[_Scaled, _Scaled]:
    """The even and the odd members of ``[B, 2K, ...]`` matrices, each ``[B, K, ...]``."""
    u, r, v = m
    bsz, count, n = u.shape
    u, v = u.view(bsz, count // 2, 2, n), v.view(bsz, count // 2, 2, n)
    r = r.view(bsz, count // 2, 2, n, n)
    return (u[:, :, 0], r[:, :, 0], v[:, :, 0]), (u[:, :, 1], r[:, :, 1], v[:, :, 1])


def _vec_scaled(alpha: torch.Tensor, m: _Scaled) -> torch.Tensor:
    """Log-domain row vectors ``[..., T]`` times scaled matrices: ``log sum_i exp(alpha_i + u_i)
    R[i, j] + v_j``."""
    u, r, v = m
    w = alpha + u
    top = w.amax(-1, keepdim=True)
    val = (torch.exp(w - top).unsqueeze(-2) @ r).squeeze(-2)
    return top + val.clamp(min=TINY).log() + v


def _scaled_vec(m: _Scaled, beta: torch.Tensor) -> torch.Tensor:
    """Scaled matrices times log-domain column vectors ``[..., T]``."""
    u, r, v = m
    w = v + beta
    top = w.amax(-1, keepdim=True)
    val = (r @ torch.exp(w - top).unsqueeze(-1)).squeeze(-1)
    return u + top + val.clamp(min=TINY).log()


class _Chain:
    """What every transfer matrix is made of: ``M_t[i, j] = trans[i, j] + emit[t, j]``, the
    identity at masked positions, and ``end[i] + start[j] + emit[t, j]`` where a new sequence
    starts (``first``): a packed row's log Z is then the sum of its sequences' log Z, because
    that matrix is an outer sum and the paths of the two sequences are summed independently.

    Held as ``exp(trans - top)`` with ``top`` the row maxima, so that a running score crosses a
    position with one real matrix product (``advance``, ``retreat``)."""

    def __init__(self, transitions, start, end) -> None:
        self.start, self.end = start, end
        self.top = transitions.amax(-1)
        self.scaled = torch.exp(transitions - self.top.unsqueeze(-1))

    def advance(self, alpha, emissions, mask, first) -> torch.Tensor:
        """The running scores ``[..., T]`` after one position, from those before it."""
        w = alpha + self.top
        shift = w.amax(-1, keepdim=True)
        plain = (torch.exp(w - shift) @ self.scaled).clamp(min=TINY).log() + shift
        opened = torch.logsumexp(alpha + self.end, -1, keepdim=True) + self.start
        return torch.where(
            mask.unsqueeze(-1), torch.where(first.unsqueeze(-1), opened, plain) + emissions, alpha
        )

    def retreat(self, beta, emissions, mask, first) -> torch.Tensor:
        """The running scores ``[..., T]`` before one position, from those after it (towards
        the end of the sequence)."""
        w = emissions + beta
        shift = w.amax(-1, keepdim=True)
        plain = (torch.exp(w - shift) @ self.scaled.T).clamp(min=TINY).log() + shift + self.top
        closed = self.end + torch.logsumexp(w + self.start, -1, keepdim=True)
        return torch.where(
            mask.unsqueeze(-1), torch.where(first.unsqueeze(-1), closed, plain), beta
        )

    def first_level(self, emissions, mask, first) -> _Scaled:
        """The pairwise products ``M_2s (x) M_2s+1`` of ``[B, 2K, T]`` emissions.

        _Scaled, every transfer matrix is one of three fixed ones, ``exp(trans - rowmax)``
        (``u`` the row maxima), all ones (a sequence start: ``u = end``, ``v`` adds ``start``)
        or the identity (masked), with ``v`` the position's emissions: no exponential of a
        ``T x T`` matrix per position, and where the odd matrix is ``exp(trans - rowmax)`` (all
        but sequence starts and padding) the products are one matrix product
        ``[B*K*T, T] @ [T, T]``.
        """
        top, chain = self.top, self.scaled
        eye = torch.eye(len(top), dtype=chain.dtype, device=chain.device)
        real = mask.unsqueeze(-1)
        starts = (first & mask).unsqueeze(-1)
        u = torch.where(starts, self.end, torch.where(real, top, 0.0))
        v = torch.where(starts, emissions + self.start, torch.where(real, emissions, 0.0))
        even, odd = slice(0, None, 2), slice(1, None, 2)
        inner = v[:, even] + u[:, odd]
        shift = inner.amax(-1, keepdim=True)
        left = torch.where(mask[:, even, None, None], chain, eye)
        left = torch.where(starts[:, even, None], 1.0, left)
        left = left * torch.exp(inner - shift).unsqueeze(-2)
        prod = left @ chain
        # times a matrix of ones (a sequence start): each row's sum in every column
        prod = torch.where(starts[:, odd, None], left.sum(-1, keepdim=True), prod)
        prod = torch.where(mask[:, odd, None, None], prod, left)
        return _scaled(u[:, even] + shift, prod, v[:, odd])

    def tree_levels(self, emissions, mask, first) -> list[_Scaled]:
        """The levels of a balanced product tree over the transfer matrices of ``[B, K, T]``
        emissions, K a power of two >= 2 (see ``_pad_to_power_of_two``): the pairwise products
        first, the whole product (one matrix) last."""
        levels = [self.first_level(emissions, mask, first)]
        while levels[-1][0].shape[1] > 1:
            levels.append(_scaled_product(*_scaled_halves(levels[-1])))
        return levels


def _pad_to_power_of_two(emissions, mask, first, at_least: int = 2):
    """Positions appended (masked: identities) up to the next power of two, and to ``at_least``
    positions at least, so that the depth of the tree depends only on the power of two: under
    torch.compile a dynamic length guards on a range (``256 < K <= 512``, or ``K <= at_least``),
    not on K itself, and all lengths of one octave (or all up to ``at_least``) share one
    graph."""
    bsz, count, n = emissions.shape
    size = 2  # a tree has two leaves at least
    while size < at_least:
        size *= 2
    while size < count:
        size *= 2
    pad = size - count
    emissions = torch.cat([emissions, emissions.new_zeros(bsz, pad, n)], dim=1)
    mask = torch.cat([mask, mask.new_zeros(bsz, pad)], dim=1)
    first = torch.cat([first, first.new_zeros(bsz, pad)], dim=1)
    return emissions, mask, first


def _down_sweep(levels: list[_Scaled], alpha: torch.Tensor, beta: torch.Tensor):
    """From the running score before the whole tree (``alpha``, ``[B, T]``) and the one after
    it (``beta``), the same before and after each pair of the first level (``[B, K/2, T]``):
    at each node the left child's score before is its parent's, the right child's is that times
    the left child's product, and the other way round after. One vector-matrix product per node,
    where differentiating through the tree costs two matrix products per node."""
    alpha, beta = alpha.unsqueeze(1), beta.unsqueeze(1)
    for level in reversed(levels[:-1]):
        left, right = _scaled_halves(level)
        alpha = _interleave(alpha, _vec_scaled(alpha, left))
        beta = _interleave(_scaled_vec(right, beta), beta)
    return alpha, beta


def _interleave(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    """``[B, K, ...]`` and ``[B, K, ...]`` -> ``[B, 2K, ...]``: even, odd, even, odd..."""
    return torch.stack([even, odd], dim=2).flatten(1, 2)


def log_partition(
    emissions: torch.Tensor,
    mask: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    first: torch.Tensor | None = None,
    tree_size: int = 2,
) -> torch.Tensor:
    """log Z of each sequence: ``[B, L, T]`` emissions, ``[B, L]`` bool mask -> ``[B]``.

    Sequences with no unmasked position get 0. Masked positions are skipped wherever they are.
    ``first`` (``[B, L]`` bool) marks where further sequences start inside a row (sequences
    packed end to end): each row's result is then the sum of its sequences' log Z.
    ``tree_size``: the product tree spans at least this many positions (padded with
    identities), so that under torch.compile every length up to it shares one graph.

    The gradient is exact to first order only: it is made of the marginals (forward-backward)
    rather than by differentiating the product tree, so a second derivative through it is 0.
    """
    dtype = emissions.dtype
    # In float64 whatever the input: an entry of a scaled product is lost when it lies more than
    # the exponent range below its row's scale, 708 nats in float64 but only 87 in float32,
    # where log Z of confident emissions (std 40) came out 62 nats off; and log Z of a packed
    # "2000 words" batch reaches 1e4 nats, where a float32 ulp is 1e-3.
    emissions, transitions, start, end = (t.double() for t in (emissions, transitions, start, end))
    bsz, length, n = emissions.shape
    # A row whose first positions are masked starts at its first real position: the running
    # score before it is a vector of total weight one under ``end`` (log Z 0, what an empty row
    # gets), and that position is a sequence start, whose matrix sums ``end`` out.
    lead = mask & (mask.cumsum(-1) == 1) & ~mask[:, :1]
    first = lead if first is None else first | lead
    alpha0 = torch.where(
        mask[:, :1], start + emissions[:, 0], -torch.logsumexp(end, -1).expand(bsz, n)
    )  # [B, T]
    # log Z is computed without autograd and given its gradient through a first-order surrogate
    # (below): differentiating the tree costs two T x T matrix products per node and keeps every
    # level for the backward; its marginals cost one vector-matrix product per node each way.
    e, trans, st, en, a0 = (t.detach() for t in (emissions, transitions, start, end, alpha0))
    chain = _Chain(trans, st, en)
    alpha, beta0 = a0, en.expand(bsz, n)
    if length > 1:
        # Positions 1..L-1 each hold a transfer matrix. The last one stays out of the tree:
        # length buckets are often powers of two, and a tree over L-1 matrices would then pad by
        # exactly one, a size torch.compile specialises.
        tail = (e[:, -1], mask[:, -1], first[:, -1])
        after_tree = chain.retreat(en.expand(bsz, n), *tail)
        beta0 = after_tree
        # For each position with a matrix: its inputs, and the running scores before and after.
        cols = (e[:, 1:], mask[:, 1:], first[:, 1:])
        before, after = a0.unsqueeze(1), en.expand(bsz, 1, n)
        if length > 2:
            inner = _pad_to_power_of_two(e[:, 1:-1], mask[:, 1:-1], first[:, 1:-1], tree_size)
            levels = chain.tree_levels(*inner)
            top = tuple(t[:, 0] for t in levels[-1])
            alpha, beta0 = _vec_scaled(a0, top), _scaled_vec(top, after_tree)
            pair_before, pair_after = _down_sweep(levels, a0, after_tree)
            even = tuple(t[:, 0::2] for t in inner)
            odd = tuple(t[:, 1::2] for t in inner)
            tree_before = _interleave(pair_before, chain.advance(pair_before, *even))
            tree_after = _interleave(chain.retreat(pair_after, *odd), pair_after)
            before = torch.cat([tree_before, alpha.unsqueeze(1)], dim=1)
            after = torch.cat([tree_after, after], dim=1)
            cols = tuple(torch.cat([t, u.unsqueeze(1)], dim=1) for t, u in zip(inner, tail))
        alpha = chain.advance(alpha, *tail)
    logz = torch.logsumexp(alpha + en, dim=-1)
    surrogate = logz + (_marginal(a0 + beta0, logz[:, None]) * (alpha0 - a0)).sum(-1)
    surrogate = surrogate + (_marginal(alpha + en, logz[:, None]) * (end - en)).sum(-1)
    if length > 1:
        surrogate = surrogate + _matrix_terms(
            chain,
            before,
            after,
            alpha,
            logz,
            cols,
            length,
            emissions - e,
            transitions - trans,
            start - st,
            end - en,
        )
    return torch.where(mask.any(-1), surrogate, torch.zeros_like(surrogate)).to(dtype)


def _marginal(log_mass: torch.Tensor, logz: torch.Tensor) -> torch.Tensor:
    """``exp(log_mass - log Z)``, at most 1 as a probability is: where lost entries (scores
    spread over more than ~700 nats at one position) make log Z too small, an inf would meet
    a 0 in the surrogate and make the loss NaN."""
    return torch.exp((log_mass - logz).clamp(max=0.0))


# Bound on the log of a sum of the pairwise marginals' factors (below), less the log of how many
# are summed: float64 overflows at 709.78 nats, and an inf would meet a forbidden move's 0.
_LOG_SUM_MAX = 708.0


def _matrix_terms(chain, before, after, alpha, logz, cols, length, d_emit, d_trans, d_start, d_end):
    """What the scores of positions 1..L-1 add to the first-order surrogate of ``log_partition``:
    each score times its marginal (the derivative of log Z), times its deviation ``d_*`` from
    its detached value (0, with the gradient of the score)."""
    emissions, live, first = cols
    starts = first & live
    plain = live & ~starts
    norm = logz[:, None, None]
    # The running scores after each position: those before the next one, then the final ones.
    later = torch.cat([before[:, 1:], alpha.unsqueeze(1)], dim=1)
    unary = torch.where(live.unsqueeze(-1), _marginal(later + after, norm), 0.0)  # [B, P, T]
    # Pairwise marginals summed over plain positions: exp(before[i] + trans[i, j] + emit[j] +
    # after[j] - log Z), as exp(trans - top) times a [T, P] @ [P, T] product of per-position
    # factors, the left one shifted to a maximum of 1.
    w = before + chain.top
    shift = w.amax(-1, keepdim=True)
    left = torch.exp(w - shift)
    # A factor is that large only where every predecessor of a tag lies ~700 nats below the best
    # one; the bound keeps the sum over positions finite.
    bound = _LOG_SUM_MAX - math.log(before.shape[1])
    right = torch.exp((shift + emissions + after - norm).clamp(max=bound))
    right = torch.where(plain.unsqueeze(-1), right, 0.0)
    on_trans = chain.scaled * (left.transpose(-1, -2) @ right)  # [B, T, T]
    # At a sequence start the matrix is an outer sum: its marginal is p(the previous sequence
    # ends in i) times p(this one starts in j).
    ends = torch.where(starts.unsqueeze(-1), torch.softmax(before + chain.end, dim=-1), 0.0)
    opens = torch.where(starts.unsqueeze(-1), unary, 0.0)
    emit = torch.cat([unary[:, : length - 2], unary[:, -1:]], dim=1)  # the tree's padding out
    return (
        (emit * d_emit[:, 1:]).sum((-1, -2))
        + (on_trans * d_trans).sum((-1, -2))
        + (opens.sum(1) * d_start).sum(-1)
        + (ends.sum(1) * d_end).sum(-1)
    )


def packed_log_likelihood(
    emissions: torch.Tensor,
    tags: torch.Tensor,
    first: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    tree_size: int = 2,
) -> torch.Tensor:
    """The summed log p(tags | emissions) of sequences packed end to end: ``[N, T]`` emissions,
    ``[N]`` tags, ``[N]`` bool ``first`` (True where a sequence starts; ``first[0]`` must be).

    One tree over the N real positions instead of B rows padded to the longest: for batches of
    documents of mixed lengths most of the padded work goes, and the tree's size depends on the
    batch's word count only (one compiled graph per octave of N, and one for every N up to
    ``tree_size``: see :func:`log_partition`).

    >>> e = torch.zeros(3, 2, dtype=torch.float64)
    >>> z = torch.zeros(2, 2, dtype=torch.float64)
    >>> first = torch.tensor([True, False, True])
    >>> round(float(packed_log_likelihood(e, torch.zeros(3, dtype=torch.long), first, z, z[0],
    ...     z[0]).exp()), 6)  # 1/4 for the 2-word sequence times 1/2 for the 1-word one
    0.125
    """
    last = torch.cat([first[1:], first.new_ones(1)])
    score = emissions.gather(-1, tags.unsqueeze(-1)).sum()
    score = score + (transitions[tags[:-1], tags[1:]] * ~first[1:]).sum()
    score = score + (start[tags] * first).sum() + (end[tags] * last).sum()
    ones = torch.ones_like(first).unsqueeze(0)
    logz = log_partition(
        emissions.unsqueeze(0), ones, transitions, start, end, first.unsqueeze(0), tree_size
    )
    return score - logz[0]


def sequence_score(
    emissions: torch.Tensor,
    tags: torch.Tensor,
    mask: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
) -> torch.Tensor:
    """Unnormalised score of the tag sequences ``tags`` ``[B, L]``; ``mask`` must be a prefix mask."""
    maskf = mask.to(emissions.dtype)
    emit = emissions.gather(-1, tags.unsqueeze(-1)).squeeze(-1)  # [B, L]
    score = (emit * maskf).sum(-1)
    trans = transitions[tags[:, :-1], tags[:, 1:]]  # [B, L-1]
    score = score + (trans * maskf[:, 1:]).sum(-1)
    lengths = mask.sum(-1)
    last = tags.gather(-1, (lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    score = score + (start[tags[:, 0]] + end[last]) * maskf[:, 0]
    return score


def log_likelihood(
    emissions: torch.Tensor,
    tags: torch.Tensor,
    mask: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
) -> torch.Tensor:
    """log p(tags | emissions) per sequence, ``[B]`` (0 for empty sequences).

    >>> e = torch.zeros(1, 2, 2, dtype=torch.float64)
    >>> z = torch.zeros(2, 2, dtype=torch.float64)
    >>> float(log_likelihood(e, torch.zeros(1, 2, dtype=torch.long),
    ...     torch.ones(1, 2, dtype=torch.bool), z, z[0], z[0]).exp())
    0.25
    """
    score = sequence_score(emissions, tags, mask, transitions, start, end)
    return score - log_partition(emissions, mask, transitions, start, end)


def viterbi(
    emissions: torch.Tensor,
    mask: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
) -> torch.Tensor:
    """Exact best tag sequences ``[B, L]`` (prefix ``mask``; padded positions get tag 0).

    Sequential over positions (inference only, never differentiated or compiled in the step);
    vectorised over the batch.
    """
    bsz, length, n = emissions.shape
    if length == 0:
        return torch.zeros(bsz, 0, dtype=torch.long, device=emissions.device)
    score = start + emissions[:, 0]  # [B, T]
    backptrs = []
    for t in range(1, length):
        cand = score.unsqueeze(-1) + transitions  # [B, T_prev, T]
        # amax + argmax: torch.max(dim) is ~10x slower on tiny tensors with several threads
        best, idx = cand.amax(dim=1), cand.argmax(dim=1)
        new = best + emissions[:, t]
        m = mask[:, t].unsqueeze(-1)
        score = torch.where(m, new, score)
        # a padded step points back to the same tag, so backtracking passes straight through
        backptrs.append(torch.where(m, idx, torch.arange(n, device=idx.device).expand(bsz, n)))
    last = (score + end).argmax(-1)
    path = [last]
    for bp in reversed(backptrs):
        last = bp.gather(-1, last.unsqueeze(-1)).squeeze(-1)
        path.append(last)
    path.reverse()
    tags = torch.stack(path, dim=1)
    return torch.where(mask, tags, torch.zeros_like(tags))
