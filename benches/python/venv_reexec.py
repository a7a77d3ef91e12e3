"""For the peers' import fallback: run the script again with the python of its virtual environment."""
import os
import sys
from pathlib import Path


def reexec_or_exit(venv_name, error, setup_hint):
    """Started by a python without the packages: re-run this script with benches/python/<venv_name>/bin/python
    when that exists (and is not the python already running); otherwise exit with the import error and the hint."""
    venv = Path(__file__).resolve().parent / venv_name
    venv_python = venv / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    sys.exit(f"{error}: run {setup_hint} first")
