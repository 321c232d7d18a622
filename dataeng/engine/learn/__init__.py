"""Learning: samples, the training loop, train/evaluate runs, teachers, pseudo-labels, rounds.

Reads active labels and images of the registry; writes ``runs`` (one lifecycle, runs.py),
``runs/<id>/`` checkpoints and metrics, ``image_metrics``, pseudo-labels and their
confidence maps (through ``engine.labels``), ``rounds`` and label-quality scores.
Models run through the one inference path, ``models.inference``.
"""
