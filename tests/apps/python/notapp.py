"""A file whose class is not a kiln.App: kiln deploy refuses it."""


class NotAnApp:
    pass
