"""The public API is exactly `dispatcher.__all__` (as httpx checks its exported members)."""

from __future__ import annotations

import dispatcher


def test_all_names_exist_and_are_sorted() -> None:
    assert dispatcher.__all__ == sorted(dispatcher.__all__)
    for name in dispatcher.__all__:
        assert hasattr(dispatcher, name), name


def test_public_classes_say_they_live_in_dispatcher() -> None:
    for name in dispatcher.__all__:
        member = getattr(dispatcher, name)
        module = getattr(member, "__module__", "dispatcher")
        assert module.startswith("dispatcher"), (name, module)


def test_the_steering_signals_are_exported() -> None:
    assert issubclass(dispatcher.Retry, dispatcher.DeliveryError)
    assert issubclass(dispatcher.Permanent, dispatcher.DeliveryError)
    assert not dispatcher.Permanent.retryable
