"""scrubin."""
