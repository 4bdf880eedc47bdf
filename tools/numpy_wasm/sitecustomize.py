"""Turn the host venv's python into a stand-in "target python" for meson.

Loaded only through the target-python wrapper written by
tools/build_numpy_wasm.sh, which puts this directory and the directory holding
Pyodide's _sysconfigdata__emscripten_wasm32-emscripten.py on PYTHONPATH and
sets _PYTHON_SYSCONFIGDATA_NAME (so sysconfig reads Pyodide's build-time
variables: EXT_SUFFIX, SOABI, SIZEOF_*, ...).  Here we only fix what sysconfig
derives from the *running* interpreter: version, platform and include dirs.

Environment:
  NPWASM_PY_VERSION   e.g. "3.14"
  NPWASM_PLATFORM     e.g. "emscripten-5.0.3-wasm32"
  NPWASM_INCLUDE      include dir with Python.h and the wasm32 pyconfig.h
"""
import os
import sysconfig

_ver = os.environ.get("NPWASM_PY_VERSION")
if _ver and os.environ.get("_PYTHON_SYSCONFIGDATA_NAME"):
    _plat = os.environ["NPWASM_PLATFORM"]
    _inc = os.environ["NPWASM_INCLUDE"]
    _cv = sysconfig.get_config_vars()  # the module's cached dict: mutate it
    _cv["py_version_short"] = _ver
    _cv["py_version_nodot"] = _ver.replace(".", "")
    _cv["py_version"] = _ver + ".0"
    _cv["INCLUDEPY"] = _inc
    _cv["CONFINCLUDEPY"] = _inc
    _cv["LIBPYTHON"] = ""  # side modules resolve CPython symbols at load time

    _orig_get_paths = sysconfig.get_paths

    def get_paths(scheme=None, vars=None, expand=True):
        kw = {"vars": vars, "expand": expand}
        if scheme is not None:
            kw["scheme"] = scheme
        paths = dict(_orig_get_paths(**kw))
        if expand:
            paths["include"] = _inc
            paths["platinclude"] = _inc
        return paths

    sysconfig.get_paths = get_paths
    sysconfig.get_python_version = lambda: _ver
    sysconfig.get_platform = lambda: _plat
