"""gctnet train (not yet implemented)."""
import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("gctnet train is not implemented yet")
