"""`python -m big_vl.adapt --config=configs/adapt/X.py --workdir=DIR`."""

from big_vl.adapt import run

if __name__ == "__main__":
  run.main()
