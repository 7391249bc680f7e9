"""refseg.clip."""
