"""`l2i-tf`: the command group. Each subcommand lives in its own module."""

from __future__ import annotations

import click

from cli import train_classifier


@click.group(
    epilog="""\b
Examples:
  l2i-tf train-classifier --out runs/classifier.keras
  l2i-tf train-classifier --help
"""
)
@click.version_option(package_name="l2i_tf")
def main():
    """Listen to Interpret: listenable interpretations of audio classifiers."""


main.add_command(train_classifier.command)

if __name__ == "__main__":
    main()
