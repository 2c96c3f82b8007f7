"""Figures: BA / ASR curves, skip-scan panels and other plots written as PNG files."""
