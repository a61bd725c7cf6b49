"""AVLnet pipeline library: manifests, sources, demo data (no argparse, no params.yaml reading)."""

__version__ = "0.1.0"
