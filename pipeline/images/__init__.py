"""Images with spoken captions (extensions.md §4, AVLnet Table 2): Places-format manifests,
image and caption loading, a demo image set, and fine-tuning a 2D-only AVLnet with its visual
encoder (ResNet-152) trained or frozen."""
