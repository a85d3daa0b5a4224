"""qsattn application: command line, studies and report assembly (see ``qsattn --help``)."""
__version__ = "0.1.0"
