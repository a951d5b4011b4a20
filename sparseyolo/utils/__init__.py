"""Small helpers shared by the model, data, metrics and CLI code."""
