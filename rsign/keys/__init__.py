"""Key and certificate lifecycle."""
