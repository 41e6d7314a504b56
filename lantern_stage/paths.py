"""Where the C++ runtime headers and the jinja2 templates are: beside the
package in a source checkout, inside it when installed from a wheel."""
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_HERE.parent / name, _HERE / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lantern_stage is missing its {name}/ folder (looked beside and inside {_HERE})")


RUNTIME_DIR = _find("cpp_runtime")
TEMPLATE_DIR = _find("templates")
