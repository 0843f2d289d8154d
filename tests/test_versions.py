"""The guard against jaxlib releases known to compute wrong results."""

import warnings

import jaxlib
import pytest

from jaxctl.util import versions


def test_the_miscompiling_release_warns_with_its_defect_and_the_fix():
    with pytest.warns(RuntimeWarning, match=r"jaxlib 0\.10\.2 .*39103.*jaxlib!=0\.10\.2"):
        versions.warn_if_broken("0.10.2")


@pytest.mark.parametrize("release", ["0.8.0", "0.10.1", "0.11.0"])
def test_other_releases_pass_silently(release):
    assert versions.known_defect(release) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        versions.warn_if_broken(release)


def test_the_installed_release_is_not_a_broken_one():
    # pyproject excludes it; an environment that still has it runs on wrong numbers.
    assert versions.known_defect(jaxlib.__version__) is None, jaxlib.__version__
