"""Learned engines: model packages, MONAI bundles, the registry of downloadable models and the shared preprocessing."""
