"""The annotator loop: review queues out (Labelme, CVAT), corrections back in.

Reads needs_review pseudo-labels, suspicious human labels and unlabelled val/test images;
writes export folders with a manifest and ``reviews`` rows, then, on import, human labels
with their edit IoU (through ``engine.labels``) and the review items' states.
"""
