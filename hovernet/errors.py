"""The one exception type for problems a user can fix (bad file, wrong option, wrong shape).

The message must name the file or value at fault and say how to fix it. The command line prints
it as a single line and exits with status 2; library users can catch it.
"""


class HoverNetError(Exception):
    """A user-fixable problem; str(error) is the full message shown to the user."""
