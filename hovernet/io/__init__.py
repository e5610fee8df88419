"""Everything that touches files: slides, annotations, writers."""
