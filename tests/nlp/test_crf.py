"""The CRF against brute-force enumeration, and the BIOUL scheme."""

import itertools

import pytest
import torch

from pureml.nlp import crf


def _brute(emissions, length, trans, start, end):
    """All tag sequences of one document: (log Z, best sequence)."""
    n = emissions.shape[-1]
    scores = {}
    for seq in itertools.product(range(n), repeat=length):
        s = start[seq[0]] + emissions[0, seq[0]] + end[seq[-1]]
        for t in range(1, length):
            s = s + trans[seq[t - 1], seq[t]] + emissions[t, seq[t]]
        scores[seq] = s
    vals = torch.stack(list(scores.values()))
    best = max(scores, key=lambda k: scores[k].item())
    return torch.logsumexp(vals, 0), best, scores


def _random_potentials(g, n_labels, constrained):
    """Random float64 transitions, start and end scores; BIOUL constraints added if asked."""
    n = crf.num_tags(n_labels)
    trans = torch.randn(n, n, generator=g, dtype=torch.float64)
    start = torch.randn(n, generator=g, dtype=torch.float64)
    end = torch.randn(n, generator=g, dtype=torch.float64)
    if constrained:
        ct, cs, ce = crf.bioul_constraints(n_labels, torch.float64)
        trans, start, end = trans + ct, start + cs, end + ce
    return trans, start, end


@pytest.mark.parametrize("constrained", [False, True])
def test_log_likelihood_and_viterbi_match_brute_force(constrained):
    g = torch.Generator().manual_seed(0)
    n_labels = 1
    n = crf.num_tags(n_labels)
    lengths = [5, 1, 3, 0, 4]
    bsz, maxlen = len(lengths), 6  # padding beyond every length
    emissions = torch.randn(bsz, maxlen, n, generator=g, dtype=torch.float64) * 2
    trans, start, end = _random_potentials(g, n_labels, constrained)
    mask = torch.arange(maxlen) < torch.tensor(lengths).unsqueeze(-1)
    tags = torch.randint(0, n, (bsz, maxlen), generator=g)
    if constrained:  # gold sequences are valid BIOUL
        tags = torch.tensor(
            [crf.bioul_encode([(0, 2, 0)] if n_w >= 2 else [], maxlen) for n_w in lengths]
        )
    ll = crf.log_likelihood(emissions, tags, mask, trans, start, end)
    best = crf.viterbi(emissions, mask, trans, start, end)
    for b, n_w in enumerate(lengths):
        if n_w == 0:
            assert ll[b].item() == 0.0 and best[b].abs().sum() == 0
            continue
        logz, argmax, scores = _brute(emissions[b], n_w, trans, start, end)
        expected = scores[tuple(tags[b, :n_w].tolist())] - logz
        assert abs(ll[b].item() - expected.item()) <= 1e-9 * abs(expected.item())
        assert tuple(best[b, :n_w].tolist()) == argmax
        assert best[b, n_w:].abs().sum() == 0


def test_log_partition_long_sequence_finite_gradients():
    g = torch.Generator().manual_seed(1)
    n = crf.num_tags(3)
    ct, cs, ce = crf.bioul_constraints(3)
    emissions = torch.randn(2, 37, n, generator=g, requires_grad=True)
    mask = torch.arange(37) < torch.tensor([[37], [20]])
    logz = crf.log_partition(emissions, mask, ct, cs, ce)
    logz.sum().backward()
    assert torch.isfinite(emissions.grad).all()
    # marginals over tags sum to one at each real position, zero gradient on padding
    assert torch.allclose(emissions.grad[0].sum(-1), torch.ones(37), atol=1e-5)
    assert emissions.grad[1, 20:].abs().max() == 0


def _span_sets(n_words, n_labels):
    """Every set of non-overlapping labelled spans over n_words words."""
    if n_words == 0:
        yield []
        return
    # first word: outside, or starts a span of length k with some label
    for rest in _span_sets(n_words - 1, n_labels):
        yield [(a + 1, b + 1, lab) for a, b, lab in rest]
    for k in range(1, n_words + 1):
        for lab in range(n_labels):
            for rest in _span_sets(n_words - k, n_labels):
                yield [(0, k, lab)] + [(a + k, b + k, lab2) for a, b, lab2 in rest]


def test_bioul_round_trip_every_span_set():
    ct, cs, ce = crf.bioul_constraints(2)
    count = 0
    for n_words in range(0, 6):
        for spans in _span_sets(n_words, 2):
            tags = crf.bioul_encode(spans, n_words)
            assert crf.bioul_decode(tags) == sorted(spans)
            if tags:  # every encoded sequence is allowed by the constraints
                assert cs[tags[0]] == 0 and ce[tags[-1]] == 0
                assert all(ct[a, b] == 0 for a, b in zip(tags, tags[1:]))
            count += 1
    # a_n = a_(n-1) + 2 * (a_(n-1) + ... + a_0): first word outside, or opening a span
    assert count == 1 + 3 + 11 + 41 + 153 + 571


def test_constraints_allow_exactly_valid_moves():
    ct, cs, ce = crf.bioul_constraints(2)
    names = crf.tag_names(["A", "B"])
    allowed = {(names[a], names[b]) for a in range(9) for b in range(9) if ct[a, b] == 0}
    assert ("B-A", "I-A") in allowed and ("B-A", "L-A") in allowed and ("I-A", "L-A") in allowed
    assert ("O", "I-A") not in allowed and ("B-A", "I-B") not in allowed
    assert ("B-A", "O") not in allowed and ("U-A", "B-B") in allowed and ("L-A", "U-A") in allowed
    assert len(allowed) == 5 * 5 + 2 * 4  # closers x openers + per-label continuations
    assert [names[i] for i in range(9) if cs[i] == 0] == ["O", "B-A", "U-A", "B-B", "U-B"]
    assert [names[i] for i in range(9) if ce[i] == 0] == ["O", "L-A", "U-A", "L-B", "U-B"]


def test_overlaps_are_refused_and_dropped():
    with pytest.raises(ValueError, match="overlaps"):
        crf.bioul_encode([(0, 2, 0), (1, 3, 0)], 4)
    assert crf.drop_overlaps([(0, 2, 0), (1, 4, 1), (4, 5, 0)]) == [(1, 4, 1), (4, 5, 0)]


def _forward_algorithm(emissions, mask, trans, start, end):
    """The textbook sequential recursion, in float64, skipping masked positions."""
    out = []
    for em, mk in zip(emissions.double(), mask):
        steps = [t for t in range(len(mk)) if mk[t]]
        if not steps:
            out.append(torch.zeros((), dtype=torch.float64))
            continue
        alpha = start.double() + em[steps[0]]
        for t in steps[1:]:
            alpha = torch.logsumexp(alpha[:, None] + trans.double() + em[t][None, :], dim=0)
        out.append(torch.logsumexp(alpha + end.double(), dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_float32_log_partition_matches_float64_forward_algorithm(scale):
    # The tree of shifted products against the sequential float64 recursion, for float32
    # inputs, also when emissions are confident enough (scale 40) that products reduced in
    # float32 lost entries (log Z was then 62 nats off).
    g = torch.Generator().manual_seed(2)
    n = crf.num_tags(4)
    ct, cs, ce = crf.bioul_constraints(4)
    trans = ct + torch.randn(n, n, generator=g)
    emissions = (torch.randn(3, 70, n, generator=g) * scale).requires_grad_()
    mask = torch.arange(70) < torch.tensor([[70], [33], [1]])
    mask[0, 10:14] = False  # interior gaps are skipped too
    logz = crf.log_partition(emissions, mask, trans, cs, ce)
    ref_em = emissions.detach().double().requires_grad_()
    ref = _forward_algorithm(ref_em, mask, trans, cs, ce)
    assert logz.dtype == torch.float32
    assert torch.allclose(logz.double(), ref, rtol=1e-6, atol=1e-4)
    (grad,) = torch.autograd.grad(logz.sum(), emissions)
    (ref_grad,) = torch.autograd.grad(ref.sum(), ref_em)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-4)


@pytest.mark.parametrize("constrained", [False, True])
def test_packed_log_likelihood_is_the_sum_over_sequences(constrained):
    # Sequences packed end to end (boundaries at odd and even positions, a 1-word sequence):
    # the packed tree's value and gradients equal the per-row computation's sums.
    g = torch.Generator().manual_seed(3)
    n_labels = 2
    n = crf.num_tags(n_labels)
    lengths = [7, 1, 4, 12, 2, 5]
    trans, start, end = _random_potentials(g, n_labels, constrained)
    maxlen = max(lengths)
    padded = torch.randn(len(lengths), maxlen, n, generator=g, dtype=torch.float64) * 3
    padded.requires_grad_()
    mask = torch.arange(maxlen) < torch.tensor(lengths).unsqueeze(-1)
    tags = torch.tensor([crf.bioul_encode([(0, 1, 1)] if n_w else [], maxlen) for n_w in lengths])
    rows = torch.cat([torch.full((n_w,), i) for i, n_w in enumerate(lengths)])
    cols = torch.cat([torch.arange(n_w) for n_w in lengths])
    packed = crf.packed_log_likelihood(
        padded[rows, cols], tags[rows, cols], cols == 0, trans, start, end
    )
    per_row = crf.log_likelihood(padded, tags, mask, trans, start, end).sum()
    assert abs(packed.item() - per_row.item()) <= 1e-9 * abs(per_row.item())
    (g_packed,) = torch.autograd.grad(packed, padded)
    (g_rows,) = torch.autograd.grad(per_row, padded)
    assert torch.allclose(g_packed, g_rows, atol=1e-10)


def test_packed_float32_batch_of_2000_words_matches_float64_recursion():
    # A whole "2000 words" batch in one row: tree entries reach thousands of nats, which the
    # float64 tree keeps exact to float32 output precision.
    g = torch.Generator().manual_seed(4)
    n = crf.num_tags(4)
    ct, cs, ce = crf.bioul_constraints(4)
    trans = ct + torch.randn(n, n, generator=g)
    lengths = [300, 517, 211, 480, 490]
    emissions = (torch.randn(sum(lengths), n, generator=g) * 5).requires_grad_()
    first = torch.zeros(sum(lengths), dtype=torch.bool)
    first[torch.tensor([0, *lengths[:-1]]).cumsum(0)] = True
    logz = crf.log_partition(
        emissions[None], torch.ones(1, len(first), dtype=torch.bool), trans, cs, ce, first[None]
    )
    rows = torch.nn.utils.rnn.pad_sequence(
        list(emissions.detach().double().split(lengths)), batch_first=True
    )
    rows.requires_grad_()
    mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(-1)
    ref = _forward_algorithm(rows, mask, trans, cs, ce).sum()
    assert logz.dtype == torch.float32
    assert abs(logz.item() - ref.item()) <= 2e-7 * abs(ref.item())
    (grad,) = torch.autograd.grad(logz.sum(), emissions)
    (ref_grad,) = torch.autograd.grad(ref, rows)
    assert torch.allclose(grad.double(), ref_grad[mask], atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_log_partition_skips_masked_positions_before_the_first_real_one(packed):
    # "Masked positions are skipped wherever they are": a row whose first positions are masked
    # (left padding) is the sequence of its real positions, not an empty one (log Z was 0).
    g = torch.Generator().manual_seed(5)
    n_labels = 2
    trans, start, end = _random_potentials(g, n_labels, constrained=True)
    emissions = torch.randn(4, 6, crf.num_tags(n_labels), generator=g, dtype=torch.float64)
    mask = torch.tensor(
        [
            [False, True, True, True, True, True],
            [False, False, False, True, False, True],
            [False] * 6,
            [True, False, True, True, False, True],
        ]
    )
    first = None
    if packed:  # a second sequence starts at position 3 (the first real one of row 1)
        first = torch.zeros(4, 6, dtype=torch.bool)
        first[:, [0, 3]] = True
    emissions.requires_grad_()
    logz = crf.log_partition(emissions, mask, trans, start, end, first)
    rows = []
    for b in range(4):
        steps = [t for t in range(6) if mask[b, t]]
        cut = 3 if packed and steps and steps[0] < 3 else 99  # where the second sequence starts
        parts = [[t for t in steps if t < cut], [t for t in steps if t >= cut]]
        total = torch.zeros((), dtype=torch.float64)
        for part in parts:
            if part:
                total = total + _brute(emissions[b, part], len(part), trans, start, end)[0]
        rows.append(total)
    ref = torch.stack(rows)
    assert torch.allclose(logz, ref, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(logz.sum(), emissions)
    (ref_grad,) = torch.autograd.grad(ref.sum(), emissions)
    assert torch.allclose(grad, ref_grad, atol=1e-10)
    assert grad[~mask].abs().max() == 0


def test_log_partition_exact_for_scores_spread_over_hundreds_of_nats():
    # Emissions of std 200 spread over ~1000 nats at one position: the scaled tree must keep
    # every entry that matters (the float64 exponent range, 708 nats, is shifted per row and per
    # junction, never across a whole matrix), packed or not.
    g = torch.Generator().manual_seed(6)
    n = crf.num_tags(4)
    ct, cs, ce = crf.bioul_constraints(4, torch.float64)
    trans = ct + torch.randn(n, n, generator=g, dtype=torch.float64)
    emissions = torch.randn(3, 70, n, generator=g, dtype=torch.float64) * 200
    mask = torch.arange(70) < torch.tensor([[70], [33], [2]])
    logz = crf.log_partition(emissions, mask, trans, cs, ce)
    ref = _forward_algorithm(emissions, mask, trans, cs, ce)
    assert torch.allclose(logz, ref, rtol=1e-12, atol=1e-9)
    first = torch.zeros(1, 105, dtype=torch.bool)
    first[0, [0, 70]] = True
    packed = torch.cat([emissions[0], emissions[1, :33], emissions[2, :2]])[None]
    first[0, 103] = True
    ones = torch.ones(1, 105, dtype=torch.bool)
    assert torch.allclose(
        crf.log_partition(packed, ones, trans, cs, ce, first), ref.sum(), rtol=1e-12
    )


def _sequences_log_z(emissions, mask, first, trans, start, end):
    """Per row, the sum of the textbook recursion's log Z over the row's sequences: its real
    positions, cut where ``first`` marks a real position."""
    rows = []
    for b in range(emissions.shape[0]):
        steps = [t for t in range(emissions.shape[1]) if mask[b, t]]
        parts, total = [], torch.zeros((), dtype=torch.float64)
        for t in steps:
            if not parts or (first is not None and first[b, t]):
                parts.append([])
            parts[-1].append(t)
        for part in parts:
            one = torch.ones(1, len(part), dtype=torch.bool)
            total = total + _forward_algorithm(emissions[b, part][None], one, trans, start, end)[0]
        rows.append(total)
    return torch.stack(rows)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 11, 40])
@pytest.mark.parametrize("scale", [1.0, 30.0, 200.0])
def test_log_partition_gradients_match_the_recursion(length, scale):
    # log Z's gradient comes from marginals (forward-backward over the tree), not from autograd
    # through the tree: against autograd through the sequential recursion, for every input
    # (emissions, transitions, start, end), over rows with padding, gaps, left padding, packed
    # sequences and weights per row; also where emissions spread over hundreds of nats.
    g = torch.Generator().manual_seed(7 + length)
    n_labels = 2
    trans, start, end = _random_potentials(g, n_labels, constrained=True)
    n = crf.num_tags(n_labels)
    emissions = torch.randn(5, length, n, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(5, length, generator=g) < 0.75
    mask[0], mask[1, : min(2, length)] = True, False  # a full row; a left-padded one
    first = torch.rand(5, length, generator=g) < 0.3
    weights = torch.randn(5, generator=g, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (emissions, trans, start, end)]
    refs = [t.clone().requires_grad_() for t in (emissions, trans, start, end)]
    logz = crf.log_partition(inputs[0], mask, *inputs[1:], first)
    ref = _sequences_log_z(refs[0], mask, first, *refs[1:])
    assert torch.allclose(logz, ref, rtol=1e-12, atol=1e-9)
    grads = torch.autograd.grad((logz * weights).sum(), inputs, materialize_grads=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), refs, materialize_grads=True)
    for name, got, want in zip(["emissions", "transitions", "start", "end"], grads, ref_grads):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), name


def test_a_larger_tree_gives_the_same_likelihood_and_gradients():
    # plan_shapes pads the tree up to the batch budget: products with identities leave log Z
    # bitwise as it was; the gradient's sums over positions run over more (zero) terms, which
    # BLAS blocks differently: float64 rounding only (measured up to 1e-13 relative).
    g = torch.Generator().manual_seed(5)
    trans, start, end = _random_potentials(g, 2, constrained=True)
    for n_words in (3, 130, 517):
        e = torch.randn(n_words, crf.num_tags(2), generator=g, dtype=torch.float64) * 3
        tags = torch.randint(0, crf.num_tags(2), (n_words,), generator=g)
        first = torch.rand(n_words, generator=g) < 0.05
        first[0] = True
        results = []
        for tree_size in (2, 1024, 4096):
            inputs = [t.clone().requires_grad_() for t in (e, trans, start, end)]
            ll = crf.packed_log_likelihood(inputs[0], tags, first, *inputs[1:], tree_size)
            results.append((ll.detach(), torch.autograd.grad(ll, inputs)))
        for ll, grads in results[1:]:
            assert torch.equal(ll, results[0][0])
            for a, b in zip(grads, results[0][1]):
                torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("tree_size, graphs", [(2, 2), (1024, 1)])
def test_lengths_up_to_the_tree_size_share_one_compiled_graph(tree_size, graphs):
    from torch._dynamo.testing import CompileCounter

    g = torch.Generator().manual_seed(6)
    trans, start, end = _random_potentials(g, 1, constrained=False)
    torch._dynamo.reset()
    counter = CompileCounter()

    def log_likelihood(e, tags, first):
        return crf.packed_log_likelihood(e, tags, first, trans, start, end, tree_size)

    fn = torch.compile(log_likelihood, backend=counter, fullgraph=True)
    for n_words in (300, 700):  # 298 and 698 positions in the tree: two octaves
        e = torch.randn(n_words, crf.num_tags(1), generator=g, dtype=torch.float64)
        tags = torch.zeros(n_words, dtype=torch.int64)
        first = torch.zeros(n_words, dtype=torch.bool)
        first[0] = True
        for t in (e, tags, first):
            torch._dynamo.mark_dynamic(t, 0)
        fn(e, tags, first)
    assert counter.frame_count == graphs
