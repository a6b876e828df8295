"""The one error type for bad input to the engine."""


class InputError(ValueError):
    """Input the engine refuses (an image of the wrong shape, a point outside the image, an empty or
    overlong text, an unknown track id, a bad vocabulary, ...). Its message says what was wrong, for a log
    line or a reply; nothing was changed. A `ValueError`, so callers that catch those keep working."""
