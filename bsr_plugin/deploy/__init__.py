"""Deploy: what a trained binarized network becomes (placeholder; filled by the layout change)."""
