"""The public surface: every name in `jaxctl.__all__` exists and is documented."""

import inspect

import jaxctl


def test_all_names_exist_and_have_docstrings():
    assert len(jaxctl.__all__) == len(set(jaxctl.__all__))
    for name in jaxctl.__all__:
        obj = getattr(jaxctl, name)
        doc = inspect.getdoc(obj)
        assert doc and len(doc.strip()) > 20, f"jaxctl.{name} needs a docstring"


def test_all_lists_every_public_import():
    public = {
        name for name, obj in vars(jaxctl).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
    }
    assert public <= set(jaxctl.__all__), public - set(jaxctl.__all__)
