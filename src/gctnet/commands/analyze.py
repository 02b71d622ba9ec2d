"""gctnet analyze (not yet implemented)."""
import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("gctnet analyze is not implemented yet")
