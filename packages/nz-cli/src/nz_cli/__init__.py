"""nz-cli."""
