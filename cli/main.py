"""`l2i-tf`: the command group. Each subcommand lives in its own module."""

from __future__ import annotations

import click

from cli import learn_dictionary, train_classifier


@click.group(
    epilog="""\b
Examples:
  l2i-tf train-classifier --out runs/classifier.keras
  l2i-tf train-classifier --help
  l2i-tf learn-dictionary --out runs/esc10_dictionary
"""
)
@click.version_option(package_name="l2i_tf")
def main():
    """Listen to Interpret: listenable interpretations of audio classifiers."""


main.add_command(train_classifier.command)
main.add_command(learn_dictionary.command)

if __name__ == "__main__":
    main()
