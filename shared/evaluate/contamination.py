"""Benchmark contamination: which benchmark prompts the training records already contain.

A task counts as contaminated when its prompt and a training record share a run of N words (13 by default, the
length GPT-3's contamination study used), or, for a prompt shorter than that, when the record contains the whole
prompt (whitespace aside). Only the benchmark's n-grams
are held in memory; the training records stream past them once.
"""

from collections.abc import Iterable

NGRAM_WORDS = 13


def _words(text: str) -> list[str]:
    return text.split()


def _ngrams(words: list[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def contaminated_tasks(prompts: dict[str, str], training_texts: Iterable[str], n: int = NGRAM_WORDS) -> dict[str, str]:
    """{task_id: how it was found ("exact" or "N-gram")} for every task whose prompt the training texts contain."""
    owners: dict[tuple[str, ...], set[str]] = {}
    short = {}  # prompts of fewer than n words have no n-gram: looked for whole
    for task, prompt in prompts.items():
        words = _words(prompt)
        if len(words) < n:
            short[task] = " ".join(words)
        for gram in _ngrams(words, n):
            owners.setdefault(gram, set()).add(task)
    found: dict[str, str] = {}
    for text in training_texts:
        words = _words(text)
        if short:
            joined = " ".join(words)
            found.update({task: "exact" for task, prompt in short.items() if prompt and prompt in joined})
        for gram in _ngrams(words, n):
            for task in owners.get(gram, ()):
                found.setdefault(task, f"{n}-gram")
    return found
