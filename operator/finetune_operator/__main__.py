"""``python -m finetune_operator``: the operator's single entry point."""

from finetune_operator.main import main

if __name__ == "__main__":
    main()
