"""A CPU emulator of the CUDA execution model that runs cuda/*.cu in the tests (see build.py)."""
