"""HTTP handlers, one module per group of endpoints; `app.py` wires them."""
