"""refseg.data."""
