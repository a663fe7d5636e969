"""One exception type for every mistake a user can make (bad file, bad setting, unknown model).

The UI shows its message as it is; the CLI prints it and exits non-zero. Anything else is a bug.
"""


class UserError(ValueError):
    """A problem with the user's input, explained in words a user understands."""
