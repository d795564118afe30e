"""Stage 2, segmentation: the engine interface and its result type, existing label maps, the offline
classical engine and the learned (MONAI) engines. Imports io and the conventions."""
