"""Every test and notebook run happens with the network off (tests/offline/sitecustomize.py): installed here in the
pytest process, and through PYTHONPATH in every process it starts (notebook kernels, JupyterLab, the CLIs)."""
import importlib.util
import os
from pathlib import Path

OFFLINE = Path(__file__).resolve().parent / "tests" / "offline"

_spec = importlib.util.spec_from_file_location("course_offline_guard", OFFLINE / "sitecustomize.py")
offline_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(offline_guard)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(OFFLINE), os.environ.get("PYTHONPATH", "")) if p)
