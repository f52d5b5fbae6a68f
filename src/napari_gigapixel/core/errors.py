"""The one base class of errors a user can act on."""


class GigapixelError(ValueError):
    """Bad input or an unusable file; the message names the file, the cause and the fix.

    The CLI prints these as one line and exits non-zero; the widgets show them
    as napari notifications; the process runner re-raises them in the caller
    with the same class and message.
    """
