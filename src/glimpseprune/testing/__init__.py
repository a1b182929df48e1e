"""Test fixtures shipped with the package (tiny random models). Library components never import this package."""
