"""The console's error: a page with a status, a title and a message for a person."""


class ConsoleError(Exception):
    def __init__(self, status: int, message: str, *, title: str = "Error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.title = title
