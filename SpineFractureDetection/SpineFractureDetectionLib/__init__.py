"""Helpers of the SpineFractureDetection Slicer module that need MRML but not Qt."""
