"""Small agent programs, written only with the libraries' public APIs, that tests run as
real processes against real hub nodes. Each prints one JSON object per line on stdout."""
