"""The one door to ZODB's, ZEO's and Twisted's internals checks their
versions."""
import importlib.metadata

from zrsd import internals


def test_installed_versions_are_the_verified_ones():
    installed = {name: importlib.metadata.version(name)
                 for name in internals.VERIFIED}
    assert internals.check_versions(installed) == []


def test_another_release_is_a_warning_naming_the_module(caplog):
    warnings = internals.check_versions(
        {'ZODB': '6.4.1', 'ZEO': '7.0', 'Twisted': '26.10.1'})
    assert warnings == [
        'ZEO 7.0 is installed; zrsd uses its internals and was verified '
        'against 6.2: review zrsd/internals.py']
    assert [r.getMessage() for r in caplog.records
            if r.levelname == 'WARNING'] == warnings
