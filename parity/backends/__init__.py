"""Framework adapters, one module each, behind one small protocol (base.py); each imports its
framework inside functions, never at import. Which adapter serves which file is registry.py's:
this package's __init__ imports none of its modules, so an adapter that needs another parity
module (mnn.py: targets.py, which needs the agent here) never leads back to itself.
"""
