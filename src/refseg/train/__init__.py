"""refseg.train."""
