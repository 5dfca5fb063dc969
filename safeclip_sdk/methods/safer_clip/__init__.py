"""SafeR-CLIP: redirect each unsafe item to its closest safe alternative, with minimal intervention."""
