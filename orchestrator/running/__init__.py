"""Running a sweep on Ray Tune: the driver, the trial functions, the cluster, progress, and the MLflow tracker."""
