"""A request through the pipeline, and the schedule that enters the same path at delivery."""
