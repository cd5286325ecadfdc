"""Helpers for the tests and the benchmark; the package itself never imports this folder.

    twins.py   PyTorch twins of tinyse's layers and models, written from the papers, with
               tinyse's attribute names so that state_dict keys match (needs torch).
"""
