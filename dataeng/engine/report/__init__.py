"""The growth report: records (records.py), built from the registry (build.py).

Reads the registry with aggregate SQL and the predictions evaluations kept; writes
``reports/report.html`` (self-contained: plots.py, gallery.py, html.py) and report.json.
It never loads a model.
"""
