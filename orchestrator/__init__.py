"""orchestrator: sweep files → Ray Tune trials → MLflow runs. The only home of ray, mlflow
and yaml; the command line lives in ``orchestrator.cli``."""
