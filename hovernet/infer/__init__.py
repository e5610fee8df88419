"""infer stage of the pipeline."""
