"""``python -m advtrain`` entry point (also what ``torchrun -m advtrain`` runs)."""

from advtrain.cli import main

if __name__ == "__main__":
    main()
