"""minilab tests: unit tests here, browser tests in tests/e2e."""
