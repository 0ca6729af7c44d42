"""``tddfa-run``: placeholder until the device runtime CLI lands."""

import sys


def main():
    print("tddfa-run: not built yet", file=sys.stderr)
    sys.exit(2)
