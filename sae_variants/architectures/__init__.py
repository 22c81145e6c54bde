"""One module per paper variant."""
