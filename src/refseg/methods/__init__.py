"""refseg.methods."""
