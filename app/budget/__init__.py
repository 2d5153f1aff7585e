"""Budget arithmetic (pure) and model pricing."""
