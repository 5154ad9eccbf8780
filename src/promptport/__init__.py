"""promptport: private soft-prompt transfer (POST) as software.

The Python API mirrors the CLI: every command is a function here that a notebook can call.
"""

__version__ = "0.1.0"

from promptport.errors import BadInput, PromptportError

__all__ = ["BadInput", "PromptportError", "__version__"]
