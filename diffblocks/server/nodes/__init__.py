"""The node catalogue: ComfyUI core nodes on our blocks (core.py) and every preset block as a node (blocks.py)."""
