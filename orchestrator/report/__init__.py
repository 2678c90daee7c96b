"""What a sweep shows when read back: the papers' tables and figures, and where it stands."""
