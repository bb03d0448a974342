"""Training side of malm: data, models, losses, the train loop and evaluation (torch lives here, imported lazily)."""
