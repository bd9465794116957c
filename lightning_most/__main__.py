"""`python -m lightning_most ...`."""

from lightning_most.main import main

if __name__ == "__main__":
    main()
