import pytest
import torch

from pureml.nlp import NerCrf, Pipeline, ScratchEncoder, SpanClassifier
from pureml.nlp.synthetic import make_corpus


def build(seed: int = 0, span_getter=("ents", "gold")) -> Pipeline:
    torch.manual_seed(seed)
    return Pipeline(
        {
            "embedding": ScratchEncoder(width=32, depth=2, rows=[500, 200, 200, 100]),
            "ner": NerCrf(),
            "status": SpanClassifier(span_getter=list(span_getter), attributes=["status"]),
        }
    )


def train(nlp: Pipeline, docs, steps: int, batch_docs: int = 16, lr: float = 0.02) -> list[float]:
    """A plain eager loop (torch.optim) to get non-trivial predictions quickly."""
    from pureml.core.rng import fold_in, make_key

    opt = torch.optim.Adam(nlp.parameters(), lr=lr)
    items = [nlp.preprocess(d, supervision=True) for d in docs]
    losses = []
    for step in range(steps):
        start = (step * batch_docs) % len(items)
        batch = nlp.collate(items[start : start + batch_docs])
        loss, _ = nlp(batch, fold_in(make_key(0), step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models: a second thread only adds OpenMP wake-ups (10x slower ops on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus():
    return make_corpus(160, seed=1)


@pytest.fixture(scope="session")
def trained(corpus):
    nlp = build()
    nlp.post_init(corpus)
    losses = train(nlp, corpus, steps=50)
    return nlp, losses
