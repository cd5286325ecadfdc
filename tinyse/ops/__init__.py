"""Every op of tinyse: one small ``Function`` subclass each, forward and backward on raw arrays.

One file per family; the functions users call are in ``tinyse.functional``.
"""
