"""The bad-input corpus and fault tests of issue 15."""
