"""The public API is exactly `dispatcher.__all__`, compared both ways (as httpx's
tests/test_exported_members.py does): every exported name exists, and every public name the
package defines is exported."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import dispatcher

#: Dunder names that are part of the public API all the same.
PUBLIC_DUNDERS = {"__version__"}


def _defined_here(value: object) -> bool:
    """Defined by dispatcher: not a module (submodules appear as attributes once imported)
    and not something imported from elsewhere (`from __future__ import annotations`)."""
    if isinstance(value, ModuleType):
        return False
    module = getattr(value, "__module__", None)
    return module is None or module == "dispatcher" or module.startswith("dispatcher.")


def test_all_names_exist_and_are_sorted() -> None:
    assert dispatcher.__all__ == sorted(dispatcher.__all__)
    for name in dispatcher.__all__:
        assert hasattr(dispatcher, name), name


def test_every_public_name_of_the_package_is_exported() -> None:
    # Import every submodule first, so that they all show up as attributes to be skipped
    # (all but __main__, which runs the CLI).
    for info in pkgutil.walk_packages(dispatcher.__path__, "dispatcher."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    public = {
        name
        for name, value in vars(dispatcher).items()
        if (not name.startswith("_") or name in PUBLIC_DUNDERS) and _defined_here(value)
    }
    assert public == set(dispatcher.__all__)


def test_public_classes_say_they_live_in_dispatcher() -> None:
    for name in dispatcher.__all__:
        member = getattr(dispatcher, name)
        module = getattr(member, "__module__", "dispatcher")
        assert module.startswith("dispatcher"), (name, module)


def test_the_steering_signals_are_exported() -> None:
    assert issubclass(dispatcher.Retry, dispatcher.DeliveryError)
    assert issubclass(dispatcher.Permanent, dispatcher.DeliveryError)
    assert not dispatcher.Permanent.retryable
