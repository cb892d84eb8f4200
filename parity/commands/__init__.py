"""The commands of ``parity`` (parity.cli gathers them): each parses its arguments, calls the
library and renders what it returns."""
