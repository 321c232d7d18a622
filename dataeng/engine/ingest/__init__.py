"""Intake: images and annotations in.

Reads folders, files and globs of images and Labelme/CVAT/COCO/Supervisely/mask/alpha
annotations; writes content-addressed store files, ``images`` rows (pHash groups, stable
splits), human labels (through ``engine.labels``), ``batches`` and ``problems`` rows.
"""
