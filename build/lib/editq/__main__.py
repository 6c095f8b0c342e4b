"""`python -m editq` is the `editq` command."""

from editq.producer.cli import main

if __name__ == "__main__":
    main()
