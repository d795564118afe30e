"""Stage 3, assessment: per-level measurement, morphometry (body heights), fracture grading and the
optional learned classifier, chained by ``assess``. Imports segmentation, io and the conventions."""
