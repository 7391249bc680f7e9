"""refseg.eval."""
