"""Hounsfield-unit thresholds that more than one stage relies on, in one place.

Stage-specific tuning values (the offline engine's bone edges, the osteoporosis screen) stay
with their stage; what is here must mean the same everywhere.
"""

AIR_MAX_HU = -500.0  # air and lung lie below this; anything denser belongs to the patient (or the table)
METAL_HU = 2500.0  # denser than any bone: an implant or cement
PLAUSIBLE_MAX_HU = 40000.0  # beyond the densest metal at any kVp: not Hounsfield units
