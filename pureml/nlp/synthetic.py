"""A SYNTHETIC quickstart corpus of clinical-style notes (no download, no real patients).

Every note is generated from templates and word lists by a seeded ``random.Random``: the same
seed gives byte-identical files on every machine. Entities: ``problem``, ``drug``, ``test``;
each entity has the attribute ``status``: ``affirmed``, ``negated`` (after cues such as
"denies", "no evidence of") or ``family`` (family history). The notes are not medically
meaningful; they exist so that ``pureml train`` has something real-looking to learn on a fresh
machine (the NER and the status classifier both learn it to high accuracy within minutes).

>>> docs = make_corpus(2, seed=0)
>>> docs[0].text == make_corpus(2, seed=0)[0].text
True
>>> sorted({s.label for d in make_corpus(50, seed=0) for s in d.spans["gold"]})
['drug', 'problem', 'test']
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from .doc import Doc, Span

PROBLEMS = [
    "chest pain",
    "shortness of breath",
    "type 2 diabetes mellitus",
    "hypertension",
    "atrial fibrillation",
    "community-acquired pneumonia",
    "acute kidney injury",
    "anemia",
    "congestive heart failure",
    "COPD exacerbation",
    "urinary tract infection",
    "fever",
    "nausea",
    "headache",
    "deep vein thrombosis",
    "hypokalemia",
    "sepsis",
    "syncope",
    "breast cancer",
    "colorectal carcinoma",
    "asthma",
    "migraine",
    "hyperlipidemia",
    "peripheral neuropathy",
    "GERD",
    "hypothyroidism",
    "cellulitis",
    "delirium",
]
DRUGS = [
    "metformin",
    "lisinopril",
    "atorvastatin",
    "apixaban",
    "furosemide",
    "amoxicillin",
    "ceftriaxone",
    "insulin glargine",
    "aspirin",
    "metoprolol",
    "omeprazole",
    "levothyroxine",
    "prednisone",
    "albuterol",
    "heparin",
    "vancomycin",
    "acetaminophen",
    "gabapentin",
]
TESTS = [
    "chest X-ray",
    "CT scan of the abdomen",
    "ECG",
    "troponin",
    "HbA1c",
    "complete blood count",
    "basic metabolic panel",
    "echocardiogram",
    "urinalysis",
    "blood cultures",
    "MRI of the brain",
    "lipid panel",
    "TSH",
    "D-dimer",
]
DOSES = ["5 mg", "10 mg", "20 mg", "40 mg", "500 mg", "1 g", "81 mg", "100 units"]
FREQ = ["daily", "twice daily", "every 8 hours", "at bedtime", "as needed"]
RELATIVES = ["mother", "father", "sister", "brother", "grandmother"]
NEG_CUES = ["denies", "no evidence of", "negative for", "no history of", "without"]

# Templates: {P} affirmed problem, {N} negated problem (after a cue), {F} family-history
# problem, {D} drug, {T} test; plain text otherwise.
TEMPLATES = [
    "Patient is a {age}-year-old {sex} with a history of {P} and {P}.",
    "{Sex} presents with {P} for {days} days.",
    "{Cue} {N}.",
    "Patient {cue} {N} and {N}.",
    "Family history is notable for {F} in his {rel}.",
    "Her {rel} had {F}.",
    "Started {D} {dose} {freq}.",
    "Continue {D} {dose} {freq} and {D} {dose} {freq}.",
    "{D} was held because of {P}.",
    "{T} showed {P}.",
    "{T} was unremarkable, no evidence of {N}.",
    "Will obtain {T} and {T} in the morning.",
    "Vital signs stable.",
    "Plan discussed with the patient, who agrees.",
    "Follow up in {days} weeks.",
]


def _note(rng: random.Random, doc_id: str) -> Doc:
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    for _ in range(rng.randint(3, 8)):
        tpl = rng.choice(TEMPLATES)
        i = 0
        sentence_start = True
        while i < len(tpl):
            if tpl[i] == "{":
                j = tpl.index("}", i)
                slot = tpl[i + 1 : j]
                i = j + 1
                label, status, text = None, None, ""
                if slot in ("P", "N", "F"):
                    label, text = "problem", rng.choice(PROBLEMS)
                    status = {"P": "affirmed", "N": "negated", "F": "family"}[slot]
                elif slot == "D":
                    label, status, text = "drug", "affirmed", rng.choice(DRUGS)
                elif slot == "T":
                    label, status, text = "test", "affirmed", rng.choice(TESTS)
                elif slot in ("cue", "Cue"):
                    text = rng.choice(NEG_CUES)
                elif slot == "age":
                    text = str(rng.randint(18, 95))
                elif slot in ("sex", "Sex"):
                    text = rng.choice(["male", "female"])
                elif slot == "days":
                    text = str(rng.randint(1, 14))
                elif slot == "dose":
                    text = rng.choice(DOSES)
                elif slot == "freq":
                    text = rng.choice(FREQ)
                elif slot == "rel":
                    text = rng.choice(RELATIVES)
                if sentence_start or slot in ("Cue", "Sex"):
                    text = text[:1].upper() + text[1:]
                if label is not None:
                    spans.append(Span(pos, pos + len(text), label, {"status": status}))
                parts.append(text)
                pos += len(text)
            else:
                parts.append(tpl[i])
                pos += 1
                i += 1
            sentence_start = False
        parts.append(" ")
        pos += 1
    text = "".join(parts).rstrip()
    return Doc(text, id=doc_id, spans={"gold": spans})


def make_corpus(n_docs: int, seed: int = 0, prefix: str = "note") -> list[Doc]:
    """``n_docs`` synthetic notes (ids ``note-0000``...), identical for identical arguments."""
    rng = random.Random(seed)
    return [_note(rng, f"{prefix}-{i:04d}") for i in range(n_docs)]


def write_corpus(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    splits: dict[str, int] | None = None,
    format: str = "brat",
) -> dict[str, Path]:
    """Write the corpus under ``path/<split>`` (brat ``.txt``/``.ann`` pairs, or
    ``<split>.jsonl`` with ``format="jsonl"``); returns ``{split: path}``.

    >>> import tempfile
    >>> out = write_corpus(tempfile.mkdtemp(), splits={"train": 3, "dev": 2})
    >>> sorted(p.name for p in out["dev"].iterdir())[:2]
    ['note-0003.ann', 'note-0003.txt']
    """
    from ..stream.jsonl import write_jsonl
    from ..stream.standoff import write_standoff

    splits = splits or {"train": 400, "dev": 100}
    if format not in ("brat", "jsonl"):
        raise ValueError(f"format must be 'brat' or 'jsonl', got {format!r}")
    docs = make_corpus(sum(splits.values()), seed=seed)
    root = Path(path)
    out = {}
    start = 0
    for split, n in splits.items():
        part = docs[start : start + n]
        start += n
        if format == "brat":
            out[split] = root / split
            write_standoff(part, out[split])
        else:
            root.mkdir(parents=True, exist_ok=True)
            out[split] = root / f"{split}.jsonl"
            write_jsonl(part, out[split])
    return out
