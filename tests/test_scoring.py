"""Scores against values worked out by hand."""

import pytest

from shared.evaluate.scoring import bleu, bucket_scores, chrf, exact_match, pass_at_k


def test_pass_at_k_matches_hand_worked_values():
    # n=5, c=2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@5 = 1 (some sample of five passes).
    assert pass_at_k({"a": [True, False, True, False, False]}, [1, 2, 5]) == pytest.approx(
        {"pass@1": 0.4, "pass@2": 0.7, "pass@5": 1.0}
    )
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252.
    assert pass_at_k({"a": [True] * 3 + [False] * 7}, [5])["pass@5"] == pytest.approx(1 - 21 / 252)


def test_pass_at_k_is_the_mean_over_tasks():
    scores = pass_at_k({"a": [True, True], "b": [False, False], "c": [True, False]}, [1, 2])
    assert scores == pytest.approx({"pass@1": (1 + 0 + 0.5) / 3, "pass@2": (1 + 0 + 1) / 3})


def test_pass_at_k_refuses_k_above_the_samples_of_a_task():
    with pytest.raises(ValueError, match="pass@3 needs at least 3 samples per task; a task has 2"):
        pass_at_k({"a": [True, True, True], "b": [True, False]}, [1, 3])


def test_exact_match_ignores_surrounding_and_repeated_whitespace_only():
    predictions = ["  Jupiter\n", "two  nine\none", "jupiter", "212 F"]
    references = ["Jupiter", "two nine one", "Jupiter", "212 degrees Fahrenheit"]
    assert exact_match(predictions, references) == 0.5


def test_bleu_is_100_for_identical_text_and_0_without_shared_words():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    assert bleu(["zero one two three"], ["four five six seven"]) == 0
    assert 0 < bleu(["the cat sat on a mat today"], ["the cat sat on the mat"]) < 100


def test_chrf_matches_a_hand_computed_value():
    # 'ab' against 'abc': 1-grams 2 of 2 hypothesis found, 2 of 3 reference; 2-grams 1 of 1, 1 of 2; no 3-grams
    # in the hypothesis, so two orders count. Mean precision 1, mean recall (2/3 + 1/2) / 2 = 7/12;
    # F2 = 5 * 1 * 7/12 / (4 * 1 + 7/12) = 7/11.
    assert chrf(["ab"], ["abc"]) == pytest.approx(100 * 7 / 11)
    # Spaces are ignored ('a b' is 'ab') and the counts add up over the corpus before the means: 1-grams 3 of 4
    # found both ways, 2-grams 1 of 2 ('ab' yes, 'xy' no); precision = recall = (3/4 + 1/2) / 2, and so is F2.
    assert chrf(["a b", "xy"], ["ab", "xz"]) == pytest.approx(100 * (3 / 4 + 1 / 2) / 2)


def test_chrf_credits_short_answers_that_bleu_scores_zero():
    """One- to three-word answers, most of them right: BLEU has no 4-gram to match and says 0; chrF does not."""
    predictions = ["Jupiter", "two nine one", "212 F", "Mars"]
    references = ["Jupiter", "two nine one", "212 F", "Venus"]
    assert exact_match(predictions, references) == 0.75
    assert bleu(predictions, references) == 0.0
    assert 70 < chrf(predictions, references) < 100
    assert chrf(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)


def test_bucket_scores_report_each_bucket_and_the_gap_between_paraphrase_buckets():
    predictions = ["Jupiter", "Jupiter", "Mars", "Jupiter", "Saturn", "212 degrees Fahrenheit"]
    references = ["Jupiter"] * 5 + ["212 degrees Fahrenheit"]
    buckets = ["original", "1", "2", "1", "2", "original"]
    scores = bucket_scores(predictions, references, buckets)
    assert scores["exact_match"] == pytest.approx(4 / 6)
    assert scores["exact_match_bucket_original"] == 1.0
    assert scores["exact_match_bucket_1"] == 1.0
    assert scores["exact_match_bucket_2"] == 0.0
    assert scores["robustness_gap"] == 1.0, "best paraphrase bucket 1.0, worst 0.0"
    assert scores["robustness_gap_bleu"] == pytest.approx(scores["bleu_bucket_1"] - scores["bleu_bucket_2"])
    assert scores["chrf_bucket_1"] == 100.0 and scores["chrf_bucket_2"] < 100.0
    assert scores["robustness_gap_chrf"] == pytest.approx(scores["chrf_bucket_1"] - scores["chrf_bucket_2"])
