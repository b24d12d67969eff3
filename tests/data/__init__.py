"""The demo's data, MovieLens ml-latest-small (README.txt: its terms), installed as ``streamrec.data``."""
