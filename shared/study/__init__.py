"""The study: plan a comparison of methods from a spec, run each child as the method's real script in its own
process, select each method's learning rate, run finals over seeds, score them, and report with intervals.

It imports neither training nor evaluation: children are `methods/<m>/train.py` and `scripts/evaluate.py`, run
as a user would run them, and what they did is read back from MLflow and their output folders.
"""
