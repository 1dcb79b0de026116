"""`python -m keras_hybrid.experiments`."""

from keras_hybrid.experiments.cli import main

main()
