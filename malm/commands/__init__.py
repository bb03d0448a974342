"""One module per CLI part; each defines `register(app)` and keeps heavy imports inside commands."""
