"""Test-suite settings shared by pytest and the notebooks nbval runs."""

import os

# Notebook 04 trains for 10 epochs and notebook 07 trains a second network: in the test suite they
# run in quick mode (one epoch on a small subset), unless the caller asked for something else.
os.environ.setdefault("CNN_QUICK", "1")
