"""The console's session store on both databases."""

from core.database import open_database
from serving.console.session import MAX_SESSIONS_PER_KEY, ConsoleSessions
from serving.keys import KeyStore
from serving.tables import CHAIN


def test_sessions_start_end_and_keep_only_a_keys_newest(database_url: str) -> None:
    engine = open_database(database_url, CHAIN)
    keys = KeyStore(engine)
    key, _ = keys.create("console")
    other, _ = keys.create("other")
    sessions = ConsoleSessions(engine)
    theirs = sessions.start(other)
    tokens = [sessions.start(key) for _ in range(MAX_SESSIONS_PER_KEY + 1)]
    assert sessions.key_id(tokens[0]) is None  # the oldest, ended by the newest login
    assert all(sessions.key_id(token) == key.id for token in tokens[1:])
    assert sessions.key_id(theirs) == other.id  # another key's session is left alone
    sessions.end(tokens[1])
    assert sessions.key_id(tokens[1]) is None
    assert sessions.key_id("not-a-token") is None
