"""Subcommands beside LightningCLI's: ``shards`` (and ``bench`` in ``pyramid_dm.bench``)."""
