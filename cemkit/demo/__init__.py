"""`cemkit demo`: the whole pipeline on built-in synthetic EM data, with an HTML report."""
