"""Guided segmentation: one point per vertebral body gives each vertebra's mask and, with one named
point, every level's name. Reuses the offline engine's bone, disc and labelling steps with the
points as the spine's axis."""
