"""Logging: one line per event, and secrets replaced by ``***`` wherever they appear.

Secrets can reach a log through an upstream body that echoes a token, or a
traceback; the redacting filter sits on the handler so it covers both.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from mapper.service.logs import REDACTED, RedactSecrets, configure
from tests.support.service_fixtures import reset_mapper_logging

SECRET = "tok-9f8e7d6c5b4a"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    yield buffer
    reset_mapper_logging()


def test_secrets_in_messages_and_arguments_are_redacted(stream):
    configure("INFO", [SECRET], stream=stream)
    log = logging.getLogger("mapper.test")
    log.info("calling with %s", SECRET)
    log.warning(f"crm said: bad token {SECRET}!")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO mapper.test calling with ***")
    assert lines[1].endswith(f"crm said: bad token {REDACTED}!")
    assert SECRET not in stream.getvalue()


def test_secrets_in_tracebacks_are_redacted(stream):
    configure("INFO", [SECRET], stream=stream)
    try:
        raise ValueError(f"failed with {SECRET}")
    except ValueError:
        logging.getLogger("mapper.test").exception("boom")
    text = stream.getvalue()
    assert "ValueError: failed with ***" in text
    assert SECRET not in text


def test_secrets_added_later_are_redacted_too(stream):
    redactor = configure("INFO", [], stream=stream)
    redactor.add(["oauth-token-abcdef"])
    logging.getLogger("mapper.test").info("Bearer oauth-token-abcdef")
    assert stream.getvalue().rstrip().endswith("Bearer ***")


def test_the_longest_secret_is_redacted_first():
    redactor = RedactSecrets(["abcdef", "abcdef-123456"])
    record = logging.LogRecord("mapper", logging.INFO, __file__, 1, "key abcdef-123456", None, None)
    redactor.filter(record)
    assert record.getMessage() == "key ***"


def test_very_short_values_are_not_treated_as_secrets():
    redactor = RedactSecrets(["ab", "", "12345"])
    assert redactor.secrets == []


def test_configuring_twice_keeps_one_handler(stream):
    configure("INFO", [], stream=io.StringIO())
    configure("INFO", [], stream=stream)
    logging.getLogger("mapper.test").info("once")
    assert stream.getvalue().count("once") == 1
    handlers = [h for h in logging.getLogger("mapper").handlers if getattr(h, "_mapper_handler", False)]
    assert len(handlers) == 1


def test_the_level_is_respected(stream):
    configure("WARNING", [], stream=stream)
    logging.getLogger("mapper.test").info("quiet")
    logging.getLogger("mapper.test").warning("loud")
    assert "quiet" not in stream.getvalue()
    assert "loud" in stream.getvalue()


class Keep(logging.Handler):
    """Keeps each formatted line: what any handler of the process would write."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_every_logger_of_the_process_is_redacted_not_only_mapper(stream):
    configure("INFO", [SECRET], stream=stream)
    keep = Keep()
    urllib3, other = logging.getLogger("urllib3.connectionpool"), logging.getLogger("some.library")
    level = urllib3.level
    for logger in (urllib3, other):
        logger.addHandler(keep)
    urllib3.setLevel(logging.DEBUG)
    try:
        # urllib3's own debug line, with a key in the query string, percent-encoded.
        urllib3.debug('%s://%s:%s "%s %s %s" %s %s', "https", "crm.example", 443, "GET",
                      f"/contacts?api_key={quote(SECRET + '/+')}", "HTTP/1.1", 200, 12)
        try:
            raise ValueError(f"Authorization: Bearer {SECRET}")
        except ValueError:
            other.exception("call failed")
    finally:
        for logger in (urllib3, other):
            logger.removeHandler(keep)
        urllib3.setLevel(level)
    text = "\n".join(keep.lines)
    assert "api_key=***" in text
    assert "ValueError: Authorization: Bearer ***" in text
    assert SECRET not in text and quote(SECRET) not in text


def test_a_redactor_from_the_engine_is_shared(stream):
    from mapper.core.redaction import Redactor

    tokens: list[str] = []
    configure("INFO", redactor=Redactor(sources=[lambda: tokens]), stream=stream)
    tokens.append("fetched-token-123456")  # learned after start-up, like an OAuth token
    logging.getLogger("mapper.test").info("Bearer fetched-token-123456")
    assert stream.getvalue().rstrip().endswith("Bearer ***")


def test_a_secret_learned_after_a_record_was_made_is_redacted_when_it_is_written(stream):
    # The record factory redacts each record where it is born; the handler does it again
    # only when its redactor learned a secret since, which must still happen.
    redactor = configure("INFO", [SECRET], stream=stream)
    logger = logging.getLogger("mapper.test")
    record = logger.makeRecord("mapper.test", logging.INFO, __file__, 1, "got %s and %s",
                               (SECRET, "oauth-token-fedcba"), None)
    redactor.add(["oauth-token-fedcba"])  # another thread fetched a token meanwhile
    logger.handle(record)
    assert stream.getvalue().rstrip().endswith(f"got {REDACTED} and {REDACTED}")



def test_lines_written_by_many_threads_to_a_file_stay_whole_and_redacted(tmp_path):
    # A real file takes the lock-free path (one os.write per line); a line longer than
    # one atomic write goes through the handler's lock. Neither may cut or mix lines.
    import threading

    from mapper.service.logwrite import ATOMIC_BYTES

    with open(tmp_path / "log.txt", "w") as file:
        configure("INFO", [SECRET], stream=file)
        log = logging.getLogger("mapper.test")
        long_text = "x" * (ATOMIC_BYTES + 100)

        def write(n: int) -> None:
            for i in range(200):
                log.info("thread %d line %d %s %s", n, i, SECRET, long_text if i % 50 == 0 else "y" * (i % 37))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    reset_mapper_logging()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 8 * 200
    assert SECRET not in "\n".join(lines)
    seen = set()
    for line in lines:
        match = re.fullmatch(r"\S+ \S+ INFO mapper\.test thread (\d) line (\d+) (\S+) (x*|y*)", line)
        assert match, line[:100]
        n, i, secret, padding = int(match[1]), int(match[2]), match[3], match[4]
        assert secret == REDACTED
        assert padding == (long_text if i % 50 == 0 else "y" * (i % 37))
        seen.add((n, i))
    assert len(seen) == 8 * 200


def test_a_handler_given_another_stream_writes_there(tmp_path):
    from mapper.service.logwrite import LineHandler

    first, second = open(tmp_path / "first.txt", "w"), open(tmp_path / "second.txt", "w")  # noqa: SIM115
    with first, second:
        handler = LineHandler(first)
        handler.handle(logging.makeLogRecord({"msg": "one"}))
        handler.setStream(second)
        handler.handle(logging.makeLogRecord({"msg": "two"}))
        handler.setStream(io.StringIO())  # no file descriptor: through the stream itself
        handler.handle(logging.makeLogRecord({"msg": "three"}))
        assert handler.stream.getvalue() == "three\n"
    assert (tmp_path / "first.txt").read_text() == "one\n"
    assert (tmp_path / "second.txt").read_text() == "two\n"
