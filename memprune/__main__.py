"""``python -m memprune`` (also what ``torchrun -m memprune score ...`` runs on every rank)."""

from memprune._entry import main

if __name__ == "__main__":
    main()
