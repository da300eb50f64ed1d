"""The RetentionKeeper capability: found through wrappers, retried by RetryingStorage."""

from __future__ import annotations

from safehold.errors import TransientStorageError
from safehold.storage.capabilities import RetentionKeeper, retention_keeper
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage, LimitedStorage, RetryingStorage


class Retaining(MemoryStorage):
    """A memory storage that says it keeps retention; its first extensions fail as a
    throttled service's would."""

    def __init__(self, *, on: bool = True, failures: int = 0) -> None:
        super().__init__()
        self.on = on
        self.failures = failures
        self.extended: list[str] = []

    def keeps_retention(self) -> bool:
        return self.on

    def extend_retention(self, name: str) -> bool:
        if self.failures:
            self.failures -= 1
            raise TransientStorageError("slow down")
        self.extended.append(name)
        return True


def test_no_keeper_without_the_capability_or_with_it_off() -> None:
    assert retention_keeper(RetryingStorage(MemoryStorage())) is None
    assert retention_keeper(LimitedStorage(Retaining(on=False), 2)) is None
    assert not RetryingStorage(Retaining(on=False)).keeps_retention()


def test_found_through_wrappers_and_retried() -> None:
    backend = Retaining(failures=2)
    stack = RetryingStorage(LimitedStorage(FaultyStorage(backend), 2), sleep=lambda _s: None)
    keeper = retention_keeper(stack)
    assert isinstance(keeper, RetentionKeeper)
    assert keeper is stack  # the retry wrapper passes the capability on, with retries
    assert keeper.extend_retention("config") is True
    assert backend.extended == ["config"]
    assert retention_keeper(LimitedStorage(backend, 1)) is backend
