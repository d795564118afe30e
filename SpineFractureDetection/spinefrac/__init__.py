"""spinefrac: the pure-Python core of the SpineFractureDetection 3D Slicer extension.

CT -> canonical orientation -> vertebra labels (VerSe ids) -> per-level measurements ->
report. No ``slicer`` or ``qt`` import anywhere in this package: it runs headless (the
``spinefrac`` command) and inside 3D Slicer alike.
"""

__version__ = "0.1.0"
