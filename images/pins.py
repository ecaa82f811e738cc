"""Print pyproject's pinned runtime dependencies, one per line (the images install exactly these).

Reads the file given as argv[1]; optional `--only NAME ...` / `--except NAME ...` filters.
Keeps the images on the same pins as the package, from one source.
"""

import sys
import tomllib


def main(argv: list[str]) -> None:
    with open(argv[1], "rb") as f:
        pins = tomllib.load(f)["project"]["dependencies"]
    mode, names = (argv[2], set(argv[3:])) if len(argv) > 2 else ("--except", set())
    for pin in pins:
        name = pin.split("==")[0].strip().lower()
        if (name in names) == (mode == "--only"):
            print(pin)


if __name__ == "__main__":
    main(sys.argv)
