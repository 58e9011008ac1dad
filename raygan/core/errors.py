"""The one exception type for user mistakes: the CLI prints its message on one line, no trace."""


class RayganError(ValueError):
    """Bad input from the user (a file, a field, a limit); the message names the problem."""
