"""The model version registry: the system of record for model versions, aliases and lineage.

This package never imports torch: it stores and verifies artifacts, it does not load them.
"""
