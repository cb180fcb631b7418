"""Small models and data for examples, bug reports and tests."""
