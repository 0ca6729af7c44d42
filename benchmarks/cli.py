"""``tddfa-bench``: placeholder until the benchmark runner lands; it prints no numbers."""

import sys


def main():
    print("tddfa-bench: not built yet", file=sys.stderr)
    sys.exit(2)
