"""One router per audience: ``auth`` (anyone), ``users`` (any account), ``admin``."""
