"""The one exception type for problems a user can fix (bad file, wrong option, wrong shape).

The message must name the file or value at fault and say how to fix it. The command line prints
it as a single line and exits with status 2; library users can catch it.
"""


class HoverNetError(Exception):
    """A user-fixable problem; str(error) is the full message shown to the user."""


class HoverNetWarning(UserWarning):
    """Something the user should know about but that does not stop the run (a converted image,
    an empty mask). The command line prints it as one `warning:` line."""


class Interrupted(BaseException):
    """Raised in the main thread by the command line's SIGINT/SIGTERM handler.

    A BaseException (like KeyboardInterrupt) so that `except Exception` blocks do not swallow
    it; commands clean up in `finally` blocks. `signum` is the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
