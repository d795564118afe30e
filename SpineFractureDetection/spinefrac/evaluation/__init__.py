"""Evaluation against references: metrics, segmentation scores, grading agreement, case discovery and the
written summary. Uses every stage; no stage uses it."""
