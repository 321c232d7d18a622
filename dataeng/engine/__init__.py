"""The use cases, grouped by stage; each takes a Workspace and a Session (in that order).

ingest/ -> learn/ -> review/ -> report/, with serve/ beside them; the label state machine
(labels.py) is shared by every stage that writes labels. No stage imports a later one.
"""
