#!/usr/bin/env bash
# Build a numpy wheel for Pyodide 314 (cp314, pyemscripten_2026_0_wasm32) from
# registry packages only (Debian apt, npm, PyPI).  Recipe:
# /work/shared/notes/numpy-wasm.md.
#
# Usage: tools/build_numpy_wasm.sh [WORK_DIR]
#   WORK_DIR defaults to <repo>/.cache/numpy-build (git-ignored).
#   Output: tools/wheels/numpy-2.4.6-cp314-cp314-pyemscripten_2026_0_wasm32.whl
#           and tools/wheels/SHA256SUMS.
#   Needs root (apt-get install of clang/lld/llvm 22) unless they are present.
#   Env: JOBS (ninja parallelism, default nproc), OUT_DIR (default tools/wheels),
#   KEEP_BUILD=1 (reuse an existing meson build dir instead of starting clean).
#
# The result is unofficial: compiled with emscripten 6.0.5 (Pyodide 314.0.7
# itself was built with 5.0.3), C/C++ flags matching Pyodide's
# (-fwasm-exceptions -sSUPPORT_LONGJMP=wasm), no BLAS/LAPACK (numpy's bundled
# lapack_lite), no SIMD dispatch, no threading, no test modules.
# numpy's sources get tools/numpy_wasm/numpy-<version>-*.patch applied (only:
# no backtrace() probe), and the built modules are checked for imports that
# Pyodide cannot resolve (tools/numpy_wasm/check_imports.mjs).
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
NUMPY_VERSION=2.4.6
NUMPY_SDIST_URL=https://files.pythonhosted.org/packages/d0/ad/fed0499ce6a338d2a03ebae59cd15093910c8875328855781952abf6c2fe/numpy-2.4.6.tar.gz
NUMPY_SDIST_SHA256=f3a3570c4a2a16746ac2c31a7c7c7b0c186b95ce902e33db6f28094ed7387dda
LLVM_MAJOR=22
LLVM_DEB_VERSION=1:22.1.8-1~deb12u1            # bookworm-security
EMSCRIPTEN_DEB_VERSION=6.0.5+dfsg+~1.41.5-2     # Debian sid, arch all
EMSCRIPTEN_DEB_SHA256=24e9eecd0a6e0c25896acf7dd42ae4261ae70c0669d4a42bde595afb7e4675c2
LIBPYTHON_DEB_VERSION=3.14.10-1                 # Debian sid, libpython3.14-dev
LIBPYTHON_DEB_SHA256=ce226a5a09bd3739123b95c5a41688ee3110651e6b4f9b22973a27c7be2f64fa
DEBIAN_SID_MIRROR=http://deb.debian.org/debian
BINARYEN_NPM_VERSION=131.0.0
PYODIDE_NPM_VERSION=314.0.7
PYODIDE_EMSCRIPTEN_VERSION=5.0.3                # what Pyodide 314.0.7 reports
PY_VERSION=3.14
CYTHON_VERSION=3.2.4
NINJA_VERSION=1.13.0
MESON_VERSION=1.12.1   # installed for completeness; numpy's vendored meson does the build
WHEEL_TAG=cp314-cp314-pyemscripten_2026_0_wasm32
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}  # 2026-01-01, wheel timestamps
export SOURCE_DATE_EPOCH

# ---- paths ------------------------------------------------------------------
TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$TOOLS_DIR")
HELPERS=$TOOLS_DIR/numpy_wasm
OUT_DIR=${OUT_DIR:-$TOOLS_DIR/wheels}   # env override only for verification builds
W=$(mkdir -p "${1:-$REPO_DIR/.cache/numpy-build}" && cd "${1:-$REPO_DIR/.cache/numpy-build}" && pwd)
DL=$W/dl; X=$W/x; SRC=$W/src/numpy-$NUMPY_VERSION
EMROOT=$X/emscripten/usr/share/emscripten
PYDEV=$X/libpython-dev
INC=$W/include/python$PY_VERSION
SYSCFG=$W/sysconfig
VENV=$W/venv
JOBS=${JOBS:-$(nproc)}
WHEEL_NAME=numpy-$NUMPY_VERSION-$WHEEL_TAG.whl
mkdir -p "$DL" "$X" "$W/src" "$OUT_DIR"

T0=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
check_sha256() {  # file expected
  local got; got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $got == "$2" ]] || { echo "sha256 mismatch for $1: $got != $2" >&2; exit 1; }
}

# ---- 1. LLVM 22 from the machine's apt (bookworm-security) -----------------
step "clang/lld/llvm $LLVM_MAJOR"
need=()
for p in clang-$LLVM_MAJOR lld-$LLVM_MAJOR llvm-$LLVM_MAJOR; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p=$LLVM_DEB_VERSION")
done
if ((${#need[@]})); then
  # another process may hold the apt/dpkg locks: wait for them
  for i in $(seq 1 60); do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         -o DPkg::Lock::Timeout=120 "${need[@]}"; then break; fi
    [[ $i == 60 ]] && { echo "apt-get install failed" >&2; exit 1; }
    echo "apt busy or failed, retrying in 10 s"; sleep 10
  done
fi
LLVM_ROOT=/usr/lib/llvm-$LLVM_MAJOR/bin
for t in clang clang++ wasm-ld llvm-ar llvm-nm llvm-objcopy; do
  [[ -x $LLVM_ROOT/$t ]] || { echo "missing $LLVM_ROOT/$t" >&2; exit 1; }
done
"$LLVM_ROOT/clang" --version | head -1

# ---- 2. emscripten + libpython3.14-dev from Debian sid (private apt state) --
step "Debian sid: emscripten $EMSCRIPTEN_DEB_VERSION, libpython$PY_VERSION-dev $LIBPYTHON_DEB_VERSION"
APTD=$W/apt
mkdir -p "$APTD"/{lists/partial,cache/archives/partial,etc/sources.list.d,etc/preferences.d}
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_SID_MIRROR sid main" > "$APTD/etc/sources.list"
: > "$APTD/etc/preferences"
APT_OPTS=(
  -o Dir::Etc::SourceList="$APTD/etc/sources.list"
  -o Dir::Etc::SourceParts="$APTD/etc/sources.list.d"
  -o Dir::Etc::Preferences="$APTD/etc/preferences"
  -o Dir::Etc::PreferencesParts="$APTD/etc/preferences.d"
  -o Dir::State::Lists="$APTD/lists"
  -o Dir::Cache="$APTD/cache"
  -o Acquire::Languages=none
  -o APT::Sandbox::User=root
)
EM_DEB=emscripten_${EMSCRIPTEN_DEB_VERSION//:/%3a}_all.deb
PY_DEB=libpython${PY_VERSION}-dev_${LIBPYTHON_DEB_VERSION}_amd64.deb
if [[ ! -f $DL/$EM_DEB || ! -f $DL/$PY_DEB ]]; then
  apt-get "${APT_OPTS[@]}" update
  (cd "$DL" && apt-get "${APT_OPTS[@]}" download \
      "emscripten=$EMSCRIPTEN_DEB_VERSION" "libpython${PY_VERSION}-dev=$LIBPYTHON_DEB_VERSION")
fi
check_sha256 "$DL/$EM_DEB" "$EMSCRIPTEN_DEB_SHA256"
check_sha256 "$DL/$PY_DEB" "$LIBPYTHON_DEB_SHA256"
rm -rf "$X/emscripten" "$PYDEV"
dpkg-deb -x "$DL/$EM_DEB" "$X/emscripten"
dpkg-deb -x "$DL/$PY_DEB" "$PYDEV"
cat "$EMROOT/emscripten-version.txt"

# ---- 3. binaryen (npm, JS builds) with executable wrappers -----------------
step "binaryen $BINARYEN_NPM_VERSION (npm)"
NODE=$(command -v node)
[[ -f $DL/binaryen-$BINARYEN_NPM_VERSION.tgz ]] || (cd "$DL" && npm pack --silent "binaryen@$BINARYEN_NPM_VERSION" >/dev/null)
rm -rf "$X/binaryen"; mkdir -p "$X/binaryen/bin"
tar -xzf "$DL/binaryen-$BINARYEN_NPM_VERSION.tgz" -C "$X/binaryen"
for tool in "$X"/binaryen/package/bin/wasm*; do
  t=$(basename "$tool")
  printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$NODE" "$tool" > "$X/binaryen/bin/$t"
  chmod +x "$X/binaryen/bin/$t"
done
"$X/binaryen/bin/wasm-opt" --version

# ---- 4. Pyodide (npm) -> _sysconfigdata ------------------------------------
step "pyodide $PYODIDE_NPM_VERSION (npm): _sysconfigdata"
[[ -f $DL/pyodide-$PYODIDE_NPM_VERSION.tgz ]] || (cd "$DL" && npm pack --silent "pyodide@$PYODIDE_NPM_VERSION" >/dev/null)
rm -rf "$X/pyodide"; mkdir -p "$X/pyodide" "$SYSCFG"
tar -xzf "$DL/pyodide-$PYODIDE_NPM_VERSION.tgz" -C "$X/pyodide" package/python_stdlib.zip package/pyodide.asm.wasm
SYSCFG_NAME=_sysconfigdata__emscripten_wasm32-emscripten
unzip -o -q -j "$X/pyodide/package/python_stdlib.zip" "$SYSCFG_NAME.py" -d "$SYSCFG"

# ---- 5. include dir: sid headers + regenerated wasm32 pyconfig.h -----------
step "include dir + pyconfig.h"
rm -rf "$W/include"; mkdir -p "$INC"
cp -a "$PYDEV/usr/include/python$PY_VERSION/." "$INC/"
python3 "$HELPERS/gen_pyconfig.py" "$SYSCFG/$SYSCFG_NAME.py" \
  "$PYDEV/usr/include/x86_64-linux-gnu/python$PY_VERSION/pyconfig.h" "$INC/pyconfig.h"

# ---- 6. numpy sdist (PyPI) --------------------------------------------------
step "numpy $NUMPY_VERSION sdist"
[[ -f $DL/numpy-$NUMPY_VERSION.tar.gz ]] || curl -fsSL -o "$DL/numpy-$NUMPY_VERSION.tar.gz.part" "$NUMPY_SDIST_URL"
[[ -f $DL/numpy-$NUMPY_VERSION.tar.gz.part ]] && mv "$DL/numpy-$NUMPY_VERSION.tar.gz.part" "$DL/numpy-$NUMPY_VERSION.tar.gz"
check_sha256 "$DL/numpy-$NUMPY_VERSION.tar.gz" "$NUMPY_SDIST_SHA256"
rm -rf "$SRC"; tar -xzf "$DL/numpy-$NUMPY_VERSION.tar.gz" -C "$W/src"
for p in "$HELPERS"/numpy-$NUMPY_VERSION-*.patch; do
  echo "applying $(basename "$p")"
  patch -d "$SRC" -p1 --forward --no-backup-if-mismatch < "$p"
done

# ---- 7. host venv: Cython, ninja, meson ------------------------------------
step "host venv (Cython $CYTHON_VERSION, ninja $NINJA_VERSION, meson $MESON_VERSION)"
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
  "Cython==$CYTHON_VERSION" "ninja==$NINJA_VERSION" "meson==$MESON_VERSION"
"$VENV/bin/cython" --version

# ---- 8. emscripten config + target-python wrapper + meson cross file --------
step "emscripten config, target python, cross file"
mkdir -p "$W/emcache" "$W/bin"
cat > "$W/emscripten.config" <<EOF
LLVM_ROOT = '$LLVM_ROOT'
BINARYEN_ROOT = '$X/binaryen'
NODE_JS = '$NODE'
EMSCRIPTEN_ROOT = '$EMROOT'
CACHE = '$W/emcache'
EOF
export EM_CONFIG=$W/emscripten.config
export EMCC_SKIP_SANITY_CHECK=1
export EMSDK_PYTHON=$(command -v python3)   # emcc runs python3 -E <tool>.py
unset EM_LLVM_ROOT EM_BINARYEN_ROOT EM_CACHE EMSDK 2>/dev/null || true

# a stand-in "target python": host interpreter + Pyodide's sysconfig data
cat > "$W/bin/python-wasm" <<EOF
#!/bin/sh
export _PYTHON_SYSCONFIGDATA_NAME=$SYSCFG_NAME
export PYTHONPATH="$HELPERS:$SYSCFG\${PYTHONPATH:+:\$PYTHONPATH}"
export NPWASM_PY_VERSION=$PY_VERSION
export NPWASM_PLATFORM=emscripten-$PYODIDE_EMSCRIPTEN_VERSION-wasm32
export NPWASM_INCLUDE="$INC"
exec "$VENV/bin/python" "\$@"
EOF
chmod +x "$W/bin/python-wasm"
"$W/bin/python-wasm" -c 'import sysconfig as s; print(" target python:", s.get_python_version(), s.get_platform(), s.get_config_var("EXT_SUFFIX"), s.get_paths()["include"])'

# sanity: a trivial compile with emcc
echo 'int f(int x){return x+1;}' > "$W/emtest.c"
"$EMROOT/emcc" -O2 -fPIC -fwasm-exceptions -sSUPPORT_LONGJMP=wasm -sSIDE_MODULE=1 "$W/emtest.c" -o "$W/emtest.so" 2>&1 | grep -v 'version-check' || true
[[ -s $W/emtest.so ]] || { echo "emcc cannot build a side module" >&2; exit 1; }

EMFLAGS="'-I$INC', '-fPIC', '-fwasm-exceptions', '-sSUPPORT_LONGJMP=wasm'"
cat > "$W/emscripten-cross.ini" <<EOF
[binaries]
c = '$EMROOT/emcc'
cpp = '$EMROOT/em++'
ar = '$EMROOT/emar'
ranlib = '$EMROOT/emranlib'
strip = '$EMROOT/emstrip'
cython = '$VENV/bin/cython'
python = '$W/bin/python-wasm'
pkg-config = 'false'

[properties]
needs_exe_wrapper = true
skip_sanity_check = true
longdouble_format = 'IEEE_QUAD_LE'

[built-in options]
c_args = [$EMFLAGS]
cpp_args = [$EMFLAGS]
c_link_args = ['-sSIDE_MODULE=1', '-fwasm-exceptions', '-sSUPPORT_LONGJMP=wasm']
cpp_link_args = ['-sSIDE_MODULE=1', '-fwasm-exceptions', '-sSUPPORT_LONGJMP=wasm']

[host_machine]
system = 'emscripten'
cpu_family = 'wasm32'
cpu = 'wasm32'
endian = 'little'
EOF

# ---- 9. meson setup / compile / install ------------------------------------
export PATH="$VENV/bin:$PATH"
BUILD=$W/build; DEST=$W/install
MESON=("$VENV/bin/python" "$SRC/vendored-meson/meson/meson.py")
[[ ${KEEP_BUILD:-0} == 1 && -f $BUILD/build.ninja ]] || rm -rf "$BUILD"
if [[ ! -f $BUILD/build.ninja ]]; then
  step "meson setup"
  t=$(date +%s)
  "${MESON[@]}" setup "$BUILD" "$SRC" --cross-file "$W/emscripten-cross.ini" \
    --prefix=/usr -Dbuildtype=release -Db_ndebug=if-release \
    -Dallow-noblas=true -Dblas=none -Dlapack=none \
    -Ddisable-svml=true -Ddisable-highway=true -Ddisable-intel-sort=true \
    -Ddisable-threading=true -Dcpu-baseline=none -Dcpu-dispatch=none
  SETUP_S=$(( $(date +%s) - t ))
fi
step "compile (ninja -j$JOBS)"
t=$(date +%s)
ninja -C "$BUILD" -j "$JOBS"
COMPILE_S=$(( $(date +%s) - t ))
step "install"
rm -rf "$DEST"
"${MESON[@]}" install -C "$BUILD" --destdir "$DEST" --tags runtime,python-runtime --quiet
PKG_INIT=$(find "$DEST" -path '*/numpy/__init__.py' -not -path '*/numpy/*/numpy/*' | head -1)
[[ -n $PKG_INIT ]] || { echo "installed numpy not found under $DEST" >&2; exit 1; }
SITE=$(dirname "$(dirname "$PKG_INIT")")
echo "installed to $SITE"
# numpy/__config__.py records compiler paths: drop the work-dir prefix so the
# wheel does not depend on where it was built (everything else is path-free)
sed -i "s|$W/|<numpy-build>/|g" "$SITE/numpy/__config__.py"
if grep -rlF --exclude-dir=__pycache__ "$W" "$SITE/numpy"; then echo "work-dir paths left in the files above" >&2; exit 1; fi
find "$SITE/numpy" -name '*.so' | sed "s|$SITE/||" | sort
# every symbol the extension modules import must exist in Pyodide 314
"$NODE" "$HELPERS/check_imports.mjs" "$X/pyodide/package/pyodide.asm.wasm" "$SITE/numpy"

# ---- 10. wheel --------------------------------------------------------------
step "wheel"
python3 "$HELPERS/make_wheel.py" "$SITE" "$SRC" "$OUT_DIR/$WHEEL_NAME" "$WHEEL_TAG"
# SHA256SUMS (sha256sum format, names relative to tools/wheels): replace only our line
touch "$OUT_DIR/SHA256SUMS"
{ grep -v "  $WHEEL_NAME\$" "$OUT_DIR/SHA256SUMS" || true
  (cd "$OUT_DIR" && sha256sum -- "$WHEEL_NAME"); } | sort -k2 > "$OUT_DIR/SHA256SUMS.tmp"
mv "$OUT_DIR/SHA256SUMS.tmp" "$OUT_DIR/SHA256SUMS"

step "done"
echo "meson setup: ${SETUP_S:-skipped} s, compile: $COMPILE_S s, total: $(( $(date +%s) - T0 )) s"
echo "wheel: $OUT_DIR/$WHEEL_NAME ($(stat -c %s "$OUT_DIR/$WHEEL_NAME") bytes)"
echo "sha256: $(sha256sum "$OUT_DIR/$WHEEL_NAME" | cut -d' ' -f1)"
