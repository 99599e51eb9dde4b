"""Notebook front end: magics, widgets, cell receipts."""
