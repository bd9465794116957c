"""`python -m lightning_most ...`."""

from lightning_most.host_memory import reuse_freed_host_memory

if __name__ == "__main__":
    reuse_freed_host_memory()  # before any large tensor: freed host blocks are reused, not faulted in every step
    from lightning_most.main import main

    main()
