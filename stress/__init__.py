"""Load and soak runs of the real daemon (not tests): `python3 -m stress.run --quick`."""
