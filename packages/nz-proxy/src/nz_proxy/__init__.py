"""nz-proxy."""
