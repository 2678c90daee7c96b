"""MLflow: the tracking URI and its login, and a sweep read back from its runs."""
