"""Stage 1, input and output: reading images and data sets, input checks, output file names, atomic writers.

Imports only the conventions at the package top (levels, coordinates, hounsfield, errors, progress, device)."""
