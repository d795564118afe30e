"""Training: the segmentation network and the fracture classifier. Uses every stage; no stage uses it."""
