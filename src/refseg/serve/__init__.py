"""refseg.serve."""
