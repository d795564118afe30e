"""Synthetic data: phantom CTs with known labels and fractures, and the validation grid that runs them through
the assessment. Imports assessment and the stages before it."""
