"""The one exception type for problems with what the user gave the command line (data, tokenizer, flags).

``electra-fast`` prints these as a single ``error: ...`` line without a traceback; anything else is a bug
and keeps its traceback.
"""


class UserInputError(ValueError):
    """Bad data, a bad tokenizer, an unwritable output directory or an impossible combination of flags."""
