"""Tests, one folder per pipeline stage like curation/."""
